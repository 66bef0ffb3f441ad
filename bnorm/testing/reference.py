"""Float64 NumPy reference implementation of batch normalization.

This module is the test oracle for bnorm.  It is written straight from the
formulas of Ioffe & Szegedy (2015, arXiv:1502.03167), Algorithms 1 and 2,
as torch.nn.BatchNorm2d's documentation specifies them, favouring readability
over speed: every quantity is computed in float64 with plain NumPy
reductions, so its own rounding error (about 1e-16 relative, growing like
log2 of the reduction length because NumPy sums pairwise) is far below
anything a float32 or float64 kernel is tested to.

Notation, for an input ``x`` of shape (N, C, *spatial) and a channel c:

* ``M`` = N * prod(spatial), the number of values per channel;
* ``mean_c`` = sum(x) / M, ``var_c`` = sum((x - mean_c)**2) / M (biased);
* ``invstd_c`` = 1 / sqrt(var_c + eps);
* ``x_hat`` = (x - mean_c) * invstd_c and ``y`` = x_hat * gamma_c + beta_c.

Any ``ndim >= 2`` works: statistics are reduced over every axis except
axis 1, the channel axis.  Inputs of any real floating dtype are accepted
and converted to float64 first, so a float32 problem can be checked against
the exact-as-possible answer for the same float32 input values.

Nothing here imports torch or bnorm's compiled extension.
"""

import functools
from typing import Any, Callable, Optional, ParamSpec, TypeVar, Union

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

_P = ParamSpec("_P")
_R = TypeVar("_R")
_F64 = NDArray[np.float64]
#: An array that the constructor's options make None (affine=False,
#: track_running_stats=False), or a gradient before backward(); typed like
#: bnorm's modules (see bnorm/_core.pyi): X | Any, so that code written for a
#: module whose options guarantee the array type-checks without None checks.
_MaybeF64 = Union[_F64, Any]

__all__ = [
    "batch_stats",
    "forward",
    "backward",
    "update_running",
    "ReferenceBatchNorm",
]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _quiet(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Let NaN and inf propagate silently, as in PyTorch and bnorm.

    A NaN in one channel is expected to make that channel's results NaN;
    NumPy's "invalid value" warnings about it would only be noise (and
    errors under ``-W error``).
    """
    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return func(*args, **kwargs)
    return wrapper


def _as_float64(a: npt.ArrayLike, name: str = "x") -> _F64:
    """Return ``a`` as a native-order float64 array (a copy if needed).

    Only real floating input is accepted: an integer or complex array given
    to a batch-norm oracle is almost certainly a bug in the test calling it,
    and silently converting would hide it.
    """
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"{name}: expected a real floating array, got dtype {a.dtype}")
    return a.astype(np.float64)


def _reduce_axes(x: NDArray[Any]) -> tuple[int, ...]:
    """All axes except the channel axis 1: (0, 2, 3, ...)."""
    if x.ndim < 2:
        raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {x.ndim}D")
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v: npt.ArrayLike, x: NDArray[Any]) -> _F64:
    """Reshape a (C,) vector to (1, C, 1, ...) so that it broadcasts against x."""
    shape = [1] * x.ndim
    shape[1] = x.shape[1]
    return np.asarray(v, dtype=np.float64).reshape(shape)


def _per_channel_param(v: Optional[npt.ArrayLike], x: NDArray[Any], default: float, name: str) -> _F64:
    """A (C,) parameter as float64, or ``default`` for every channel if None."""
    channels = x.shape[1]
    if v is None:
        return np.full(channels, default, dtype=np.float64)
    v = _as_float64(v, name)
    if v.shape != (channels,):
        raise ValueError(f"{name}: expected shape ({channels},), got {v.shape}")
    return v


def _values_per_channel(x: NDArray[Any]) -> int:
    """M = N * prod(spatial)."""
    return x.size // x.shape[1] if x.shape[1] else 0


# ----------------------------------------------------------------------------
# functional reference
# ----------------------------------------------------------------------------

@_quiet
def batch_stats(x: npt.ArrayLike) -> tuple[_F64, _F64]:
    """Per-channel batch mean and *biased* variance, float64 arrays of shape (C,).

    The variance is computed with a centred second pass, never as
    E[x**2] - E[x]**2, which loses everything to cancellation when the mean
    is large compared with the spread.

    A constant channel gets exactly its value as mean (and so variance 0):
    summing M copies of v and dividing by M can round to a neighbour of v,
    and then x - mean would be a tiny non-zero number instead of the exact
    zero that makes the output exactly beta.  NaN or inf in a channel makes
    that channel's statistics non-finite and leaves the others alone.

    An empty channel (M == 0) has NaN statistics.
    """
    x = _as_float64(x)
    axes = _reduce_axes(x)
    if _values_per_channel(x) == 0:
        nan = np.full(x.shape[1], np.nan)
        return nan, nan.copy()
    mean = x.mean(axis=axes)
    constant = x.min(axis=axes) == x.max(axis=axes)  # False for NaN channels
    mean = np.where(constant, x.max(axis=axes), mean)
    centred = x - _per_channel(mean, x)
    var = (centred * centred).mean(axis=axes)
    return mean, var


def _statistics(x: _F64, mean: Optional[npt.ArrayLike],
                var: Optional[npt.ArrayLike]) -> tuple[_F64, _F64]:
    """The statistics to normalise with: batch statistics if both are None."""
    if mean is None and var is None:
        return batch_stats(x)
    if mean is None or var is None:
        raise ValueError("give both mean and var, or neither (for batch statistics)")
    return (_per_channel_param(mean, x, 0.0, "mean"),
            _per_channel_param(var, x, 1.0, "var"))


@_quiet
def forward(x: npt.ArrayLike, gamma: Optional[npt.ArrayLike] = None, beta: Optional[npt.ArrayLike] = None,
            mean: Optional[npt.ArrayLike] = None, var: Optional[npt.ArrayLike] = None, eps: float = 1e-5) -> _F64:
    """Batch-norm output ``y`` (float64, shape of x).

    Uses x's batch statistics when ``mean`` and ``var`` are None (training,
    or ``track_running_stats=False``), otherwise the given statistics
    (eval mode with running statistics).  ``gamma=None`` means 1 and
    ``beta=None`` means 0 (``affine=False``).
    """
    x = _as_float64(x)
    mean, var = _statistics(x, mean, var)
    gamma = _per_channel_param(gamma, x, 1.0, "gamma")
    beta = _per_channel_param(beta, x, 0.0, "beta")
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    return x_hat * _per_channel(gamma, x) + _per_channel(beta, x)


@_quiet
def backward(dy: npt.ArrayLike, x: npt.ArrayLike, gamma: Optional[npt.ArrayLike] = None,
             mean: Optional[npt.ArrayLike] = None, var: Optional[npt.ArrayLike] = None, eps: float = 1e-5,
             training: bool = True) -> tuple[_F64, _F64, _F64]:
    """Gradients ``(dx, dgamma, dbeta)`` of a batch norm, all float64.

    ``dy`` is the gradient of the loss with respect to the output y.

    training=True: the statistics are x's batch statistics (computed here if
    ``mean`` and ``var`` are None) and depend on x, so the gradient flows
    through them as well::

        dbeta  = sum(dy)
        dgamma = sum(dy * x_hat)
        dx     = gamma * invstd * (dy - dbeta / M - x_hat * dgamma / M)

    training=False: the statistics are constants (running statistics in eval
    mode), ``mean`` and ``var`` are required, and ``dx = dy * gamma * invstd``
    with dgamma and dbeta as above.

    dgamma and dbeta are returned even when ``gamma`` is None, because they
    are what the gradient of an affine layer would be; callers of an
    ``affine=False`` module simply ignore them.  With M == 0 they are zeros.
    """
    x = _as_float64(x)
    dy = _as_float64(dy, "dy")
    if dy.shape != x.shape:
        raise ValueError(f"dy shape {dy.shape} differs from x shape {x.shape}")
    if not training and (mean is None or var is None):
        raise ValueError("training=False needs the (running) mean and var the forward used")
    axes = _reduce_axes(x)
    M = _values_per_channel(x)
    gamma = _per_channel_param(gamma, x, 1.0, "gamma")
    if M == 0:
        zeros = np.zeros(x.shape[1])
        return np.zeros_like(x), zeros, zeros.copy()

    mean, var = _statistics(x, mean, var)
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    scale = _per_channel(gamma * invstd, x)
    if training:
        dx = scale * (dy - _per_channel(dbeta / M, x) - x_hat * _per_channel(dgamma / M, x))
    else:
        dx = scale * dy
    return dx, dgamma, dbeta


@_quiet
def update_running(running_mean: npt.ArrayLike, running_var: npt.ArrayLike, batch_mean: npt.ArrayLike,
                   batch_var: npt.ArrayLike, count: int, momentum: Optional[float]) -> tuple[_F64, _F64]:
    """New running statistics ``(mean, var)`` after one training batch, float64.

    ``momentum`` is the weight of the *new* batch (PyTorch convention, not
    Keras/Flax's weight of the old value); for ``momentum=None`` modules pass
    1 / num_batches_tracked here.  ``batch_var`` is the biased batch
    variance; the running variance is fed the unbiased one,
    batch_var * count / (count - 1), where ``count`` = M, the number of
    values per channel.  The inputs are not modified.
    """
    if momentum is None:
        raise TypeError("momentum must be a number; use 1/num_batches_tracked for momentum=None")
    if count <= 1:
        raise ValueError(f"the unbiased variance needs more than 1 value per channel, got {count}")
    running_mean = _as_float64(running_mean, "running_mean")
    running_var = _as_float64(running_var, "running_var")
    batch_mean = _as_float64(batch_mean, "batch_mean")
    batch_var = _as_float64(batch_var, "batch_var")
    m = float(momentum)
    unbiased = batch_var * (count / (count - 1))
    return (1.0 - m) * running_mean + m * batch_mean, (1.0 - m) * running_var + m * unbiased


# ----------------------------------------------------------------------------
# module reference
# ----------------------------------------------------------------------------

class ReferenceBatchNorm:
    """Float64 batch-norm layer with the state and semantics of bnorm.BatchNorm*d.

    It works for any input with ``ndim >= 2`` (the bnorm classes check the
    exact ndim; this one does not, so one reference serves 1d, 2d and 3d).
    Parameters, running statistics and gradients are float64 arrays and can
    be set freely (e.g. copied from the module under test to keep a
    comparison per-step).

    Semantics, matching torch.nn.BatchNorm2d:

    * batch statistics are used when ``training`` or when
      ``track_running_stats`` is False; otherwise the running statistics;
    * a training forward with tracked statistics increments
      ``num_batches_tracked`` and then updates the running statistics with
      m = momentum, or 1 / num_batches_tracked when momentum is None;
    * using batch statistics with exactly one value per channel raises
      ValueError (as torch does, also in eval mode without running stats);
    * an input with no values per channel gives an empty output, still
      counts as a batch, and leaves the running statistics unchanged;
    * backward after a forward that used running statistics treats them as
      constants.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True) -> None:
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.dtype = np.dtype(np.float64)
        self.training = True
        C = self.num_features
        self.gamma: _MaybeF64 = np.ones(C) if affine else None
        self.beta: _MaybeF64 = np.zeros(C) if affine else None
        self.grad_gamma: _MaybeF64 = None
        self.grad_beta: _MaybeF64 = None
        if track_running_stats:
            self.running_mean: _MaybeF64 = np.zeros(C)
            self.running_var: _MaybeF64 = np.ones(C)
            self.num_batches_tracked: Union[int, Any] = 0  # None without tracking (the Any trick)
        else:
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None
        # (x, mean, var, uses_batch_stats) of the last forward
        self._saved: Optional[tuple[_F64, _F64, _F64, bool]] = None

    def train(self, mode: bool = True) -> "ReferenceBatchNorm":
        self.training = bool(mode)
        return self

    def eval(self) -> "ReferenceBatchNorm":
        return self.train(False)

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, x: npt.ArrayLike) -> _F64:
        """Output of the layer for ``x`` (float64), updating state like torch."""
        x = _as_float64(x)
        _reduce_axes(x)
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (axis 1), got {x.shape[1]}")
        M = _values_per_channel(x)
        batch = self._uses_batch_stats()
        if batch and M == 1:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input size {tuple(x.shape)}")
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1

        if batch:
            mean, var = batch_stats(x)
            if self.training and self.track_running_stats and M > 0:
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
                self.running_mean, self.running_var = update_running(
                    self.running_mean, self.running_var, mean, var, M, m)
        else:
            mean, var = self.running_mean.copy(), self.running_var.copy()

        self._saved = (x, mean, var, batch)
        if M == 0:
            return np.zeros_like(x)
        return forward(x, self.gamma, self.beta, mean, var, self.eps)

    __call__ = forward

    def backward(self, dy: npt.ArrayLike) -> _F64:
        """Gradient w.r.t. the last forward's input; sets grad_gamma/grad_beta."""
        if self._saved is None:
            raise RuntimeError("backward called before forward")
        x, mean, var, batch = self._saved
        dx, dgamma, dbeta = backward(dy, x, self.gamma, mean, var, self.eps, training=batch)
        if self.affine:
            self.grad_gamma, self.grad_beta = dgamma, dbeta
        return dx

    def __repr__(self) -> str:
        return (f"ReferenceBatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats})")
