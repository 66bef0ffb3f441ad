"""BatchNorm1d/2d/3d: the C module type plus the conveniences simpler in Python.

The type (bnorm._core._BatchNorm) holds the parameters and buffers and runs the
kernels; these subclasses only fix the accepted input ranks and add repr and the
PyTorch-compatible state_dict / load_state_dict.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from . import _core
from ._fold import fold as _fold

if TYPE_CHECKING:
    from typing_extensions import Self

_PARAMETERS = {"weight": "gamma", "bias": "beta"}
_BUFFERS = {"running_mean": "running_mean", "running_var": "running_var"}


def _as_numpy(value: Any, key: str) -> np.ndarray:
    """A NumPy view of a NumPy array, a CPU tensor (without importing torch) or a number."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"state_dict[{key!r}]: expected real numbers, got dtype {array.dtype}")
    return array


def _rebuild(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Constructor call for pickle, which passes positional arguments only."""
    return cls(*args, **kwargs)


class _BatchNormBase(_core._BatchNorm):
    __slots__ = ()

    fold = _fold

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
            f"dtype={self.dtype.name}"
            + (f", activation={self.activation!r})" if self.activation else ")")
        )

    def _state_keys(self) -> dict[str, str]:
        """PyTorch's state_dict key -> attribute, for the tensors this module has."""
        keys = dict(_PARAMETERS) if self.affine else {}
        if self.beta is None:  # affine=False, or torch's bias=False: a scale without a shift
            keys.pop("bias", None)
        if self.track_running_stats:
            keys.update(_BUFFERS)
        return keys

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters and buffers under PyTorch's key names."""
        gamma, beta, running_mean, running_var, count = self._get_state()  # one atomic snapshot
        values: dict[str, Any] = {"gamma": gamma, "beta": beta, "running_mean": running_mean, "running_var": running_var}
        state = {key: values[attr] for key, attr in self._state_keys().items()}
        if self.track_running_stats:
            state["num_batches_tracked"] = np.array(count, dtype=np.int64)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load values from a state dict of bnorm or PyTorch (NumPy arrays or CPU tensors).

        Values are cast to the module's dtype, as PyTorch's load_state_dict does; shapes
        must match. With strict=True, missing and unexpected keys raise RuntimeError.
        """
        expected = set(self._state_keys())
        if self.track_running_stats:
            expected.add("num_batches_tracked")
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        arrays = {key: _as_numpy(state_dict[key], key) for key in expected & set(state_dict)}
        for key, array in arrays.items():
            want = () if key == "num_batches_tracked" else (self.num_features,)
            if array.shape != want:
                raise ValueError(f"state_dict[{key!r}]: expected shape {want}, got {array.shape}")
        if "num_batches_tracked" in arrays:
            count = arrays["num_batches_tracked"]
            if not (np.isfinite(count) and 0 <= count < 2**63):
                raise ValueError(f"state_dict['num_batches_tracked']: expected an int in [0, 2**63), got {count}")
        # Everything is checked before anything is assigned, so a bad dict changes nothing,
        # and everything is assigned at once, under the module's lock.
        new: dict[str, np.ndarray | None] = dict.fromkeys(["gamma", "beta", "running_mean", "running_var"])
        for key, array in arrays.items():
            if key != "num_batches_tracked":
                attr = self._state_keys()[key]
                # the dtype of the module's own array (float32 for a float16 module)
                new[attr] = np.ascontiguousarray(array.astype(getattr(self, attr).dtype))
        tracked = int(arrays["num_batches_tracked"]) if "num_batches_tracked" in arrays else None
        self._set_state(new["gamma"], new["beta"], new["running_mean"], new["running_var"], tracked)

    # ---- copying and pickling ----
    #
    # pickle, copy.copy and copy.deepcopy all go through the same state: the constructor
    # arguments, the training flag, num_batches_tracked and copies of gamma, beta and the
    # running statistics. A copy never shares memory with the original (the module owns its
    # arrays and the setters copy into them). A copy starts without a pending backward:
    # the last forward's saved input and grad_gamma / grad_beta are not copied, so
    # backward() on a fresh copy raises RuntimeError until it has run a forward.

    def _init_args(self) -> tuple[Any, ...]:
        return (self.num_features, self.eps, self.momentum, self.affine, self.track_running_stats, self.dtype,
                self.activation)

    def _init_kwargs(self) -> dict[str, Any]:
        # bias is keyword-only, as in torch; only affine modules without beta were built with bias=False
        return {"bias": not self.affine or self.beta is not None}

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"training": self.training, "num_batches_tracked": self.num_batches_tracked}
        for attr in ("gamma", "beta", "running_mean", "running_var"):
            value = getattr(self, attr)
            if value is not None:
                state[attr] = value.copy()
        instance_dict = getattr(self, "__dict__", None)  # a user subclass without __slots__
        if instance_dict:
            state["__dict__"] = dict(instance_dict)
        return state

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.training = state["training"]
        self.num_batches_tracked = state["num_batches_tracked"]
        for attr in ("gamma", "beta", "running_mean", "running_var"):
            if attr in state:
                setattr(self, attr, np.asarray(state[attr]))
        if "__dict__" in state:
            self.__dict__.update(state["__dict__"])

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._init_args(), self._init_kwargs()), self.__getstate__())

    def __copy__(self) -> Self:
        new = type(self)(*self._init_args(), **self._init_kwargs())
        new.__setstate__(self.__getstate__())
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        import copy

        new = type(self)(*self._init_args(), **self._init_kwargs())
        memo[id(self)] = new
        state = self.__getstate__()
        if "__dict__" in state:
            state["__dict__"] = copy.deepcopy(state["__dict__"], memo)
        new.__setstate__(state)
        return new


class BatchNorm1d(_BatchNormBase):
    """Batch normalisation of (N, C) or (N, C, L) arrays, like torch.nn.BatchNorm1d.

    BatchNorm1d(num_features, eps=1e-5, momentum=0.1, affine=True,
                track_running_stats=True, dtype=None, activation=None, *, bias=True)

    dtype=None means float32; activation='relu' fuses max(0, .) into the output.
    """

    __slots__ = ()
    _ndim_range = (2, 3)


class BatchNorm2d(_BatchNormBase):
    """Batch normalisation of (N, C, H, W) arrays, like torch.nn.BatchNorm2d.

    BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
                track_running_stats=True, dtype=None, activation=None, *, bias=True)

    dtype=None means float32; activation='relu' fuses max(0, .) into the output.

    momentum is the weight of the *new* batch in the running statistics (PyTorch's
    convention; Keras and Flax call 0.99 the weight of the old value); None gives a
    cumulative average. Call the module (or forward) on an array, then backward(dy)
    for the input gradient; grad_gamma and grad_beta hold the parameter gradients.
    """

    __slots__ = ()
    _ndim_range = (4, 4)


class BatchNorm3d(_BatchNormBase):
    """Batch normalisation of (N, C, D, H, W) arrays, like torch.nn.BatchNorm3d.

    BatchNorm3d(num_features, eps=1e-5, momentum=0.1, affine=True,
                track_running_stats=True, dtype=None, activation=None, *, bias=True)

    dtype=None means float32; activation='relu' fuses max(0, .) into the output.
    """

    __slots__ = ()
    _ndim_range = (5, 5)
