"""SyncBatchNorm: batch normalisation of a batch split over MPI processes.

Each process (rank) passes its part of the batch; training uses the statistics of
the whole batch, as one process would on the concatenation of the parts in rank
order. One all-gather in forward, of each rank's per-channel (count, mean, M2) in
float64, merged with Chan's formula in rank order on every rank (the same bits
everywhere); one in backward, of each rank's per-channel (sum dy, sum dy * (x - mean)).
mpi4py is imported when the first SyncBatchNorm is built: ``pip install "bnorm[mpi]"``.
See docs/sync.rst.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from . import _core
from . import functional as F
from ._modules import _BatchNormBase

if TYPE_CHECKING:
    from mpi4py import MPI

_DTYPES = ("float16", "float32", "float64")
# What a rank says about its input before the statistics: every rank checks every
# rank's header, so that a mismatch raises everywhere instead of leaving the others
# waiting in the next collective.
_NDIM, _CHANNELS, _DTYPE, _FEATURES, _MODULE_DTYPE, _LOCAL_ERROR = range(6)
_HEADER = 6
_LOCAL_ERRORS = {
    1: "x is not a float16, float32 or float64 numpy array",
    2: "out= is not a writeable array of x's shape and dtype that does not overlap x",
}


def _mpi() -> ModuleType:
    try:
        from mpi4py import MPI
    except ImportError as missing:
        raise ImportError(
            f'bnorm.SyncBatchNorm needs mpi4py and an MPI library ({missing}): pip install "bnorm[mpi]" '
            "(installs mpi4py and mpich, which brings mpiexec)"
        ) from missing
    return MPI


def _dtype_code(dtype: np.dtype[Any]) -> int:
    return _DTYPES.index(dtype.name) if dtype.name in _DTYPES else -1


def _out_is_usable(out: Any, x: npt.NDArray[Any]) -> bool:
    """The checks of out= that can fail on one rank alone, made before communicating."""
    if out is None:
        return True
    return (
        isinstance(out, np.ndarray)
        and out.shape == x.shape
        and out.dtype == x.dtype
        and out.flags.writeable
        and not np.shares_memory(out, x)
    )


class SyncBatchNorm(_BatchNormBase):
    """Batch normalisation over the whole batch of the ranks of an MPI communicator.

    SyncBatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True,
                  track_running_stats=True, dtype=None, activation=None, *, bias=True,
                  comm=None)

    Options as for BatchNorm1d/2d/3d; comm is an mpi4py intracommunicator
    (MPI.COMM_WORLD when None). Input (N_r, C, *spatial) with 2 to 5 dimensions,
    NCHW or channels-last; N_r and the spatial sizes may differ between ranks (N_r = 0
    too), C, the dtype and the number of dimensions may not. Every rank must call
    forward and backward together. grad_gamma and grad_beta are this rank's
    contributions, as in PyTorch: their sum over the ranks is the gradient of the
    whole batch (comm.Allreduce(MPI.IN_PLACE, g) sums them). In eval mode with running
    statistics nothing is communicated.
    """

    __slots__ = ("_comm", "_saved", "_grads")
    _ndim_range = (2, 5)
    _comm: MPI.Intracomm
    # the last training forward's (x, mean, invstd, count); None after an eval one
    _saved: tuple[npt.NDArray[Any], npt.NDArray[np.float64], npt.NDArray[np.float64], int] | None
    _grads: tuple[npt.NDArray[Any] | None, npt.NDArray[Any] | None]

    def __new__(
        cls,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: npt.DTypeLike | None = None,
        activation: str | None = None,
        *,
        bias: bool = True,
        comm: MPI.Intracomm | None = None,
    ) -> SyncBatchNorm:
        MPI = _mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
            raise TypeError(
                "comm: expected an mpi4py intracommunicator (MPI.COMM_WORLD, or one from comm.Split), "
                f"got {type(comm).__name__}"
            )
        # the stub's __new__ returns the base type; at run time it is cls
        self = cast(
            SyncBatchNorm,
            super().__new__(cls, num_features, eps, momentum, affine, track_running_stats, dtype, activation, bias=bias),
        )
        self._comm = comm
        self._saved = None
        self._grads = (None, None)
        return self

    @property
    def comm(self) -> MPI.Intracomm:
        """The communicator whose ranks share the batch."""
        return self._comm

    @property
    def grad_gamma(self) -> npt.NDArray[Any] | None:
        """This rank's contribution to the gradient of gamma from the last backward()."""
        return self._grads[0]

    @property
    def grad_beta(self) -> npt.NDArray[Any] | None:
        """This rank's contribution to the gradient of beta from the last backward()."""
        return self._grads[1]

    def _init_kwargs(self) -> dict[str, Any]:
        return {**super()._init_kwargs(), "comm": self._comm}

    @classmethod
    def convert(cls, module: _BatchNormBase, comm: MPI.Intracomm | None = None) -> SyncBatchNorm:
        """A SyncBatchNorm with the options, parameters, running statistics, batch count
        and mode of a BatchNorm1d/2d/3d (copies: the two share no memory)."""
        if not isinstance(module, _BatchNormBase):
            raise TypeError(
                f"SyncBatchNorm.convert: expected a bnorm BatchNorm1d, BatchNorm2d or BatchNorm3d, "
                f"got {type(module).__name__}"
            )
        converted = cls(*module._init_args(), **{**module._init_kwargs(), "comm": comm})
        converted.__setstate__(module.__getstate__())
        return converted

    # ---- forward ----

    def __call__(self, x: npt.NDArray[Any], /, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        return self.forward(x, out)

    def forward(self, x: npt.NDArray[Any], /, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """Normalise this rank's part x; in training, with the whole batch's statistics."""
        if not (self.training or not self.track_running_stats):
            self._saved = None  # running statistics: this rank's work alone
            return super().forward(x, out)
        header = self._describe(x, out)
        usable = header[_LOCAL_ERROR] == 0 and self._agrees(header)
        if usable and not (x.flags.c_contiguous or np.moveaxis(x, 1, -1).flags.c_contiguous):
            x = np.ascontiguousarray(x)  # once, instead of in each phase here and in backward
        moments = F.batch_norm_stats(x) if usable else np.zeros((3, self.num_features))
        gathered = self._comm.allgather(np.concatenate([header, moments.ravel()]))
        self._check_headers([g[:_HEADER] for g in gathered])
        everyone = np.stack([g[_HEADER:].reshape(3, self.num_features) for g in gathered])
        total = int(everyone[:, 0, 0].sum())
        if total == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{x.shape} on rank {self._comm.Get_rank()} and 1 value per channel over all "
                f"{self._comm.Get_size()} ranks"
            )
        update = self.training and self.track_running_stats
        momentum = 0.0
        if update:
            self.num_batches_tracked = min(self.num_batches_tracked + 1, 2**63 - 1)
            momentum = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        mean, invstd, count = F.batch_norm_gather_stats_with_counts(
            everyone,
            self.running_mean if update else None,
            self.running_var if update else None,
            momentum,
            self.eps,
        )
        y = F.batch_norm_elemt(x, mean, invstd, self.gamma, self.beta, out, activation=self.activation)
        self._saved = (x, mean, invstd, count)
        return y

    def _describe(self, x: Any, out: Any) -> npt.NDArray[np.float64]:
        header = np.zeros(_HEADER)
        header[_FEATURES] = self.num_features
        header[_MODULE_DTYPE] = _dtype_code(self.dtype)
        if not isinstance(x, np.ndarray) or _dtype_code(x.dtype) < 0:
            header[[_NDIM, _CHANNELS, _DTYPE]] = -1
            header[_LOCAL_ERROR] = 1
            return header
        header[_NDIM] = x.ndim
        header[_CHANNELS] = x.shape[1] if x.ndim >= 2 else -1
        header[_DTYPE] = _dtype_code(x.dtype)
        header[_LOCAL_ERROR] = 0 if _out_is_usable(out, x) else 2
        return header

    def _agrees(self, header: npt.NDArray[np.float64]) -> bool:
        """Whether this rank's input fits its module."""
        lo, hi = self._ndim_range
        return bool(
            lo <= header[_NDIM] <= hi
            and header[_CHANNELS] == header[_FEATURES]
            and header[_DTYPE] == header[_MODULE_DTYPE]
        )

    def _check_headers(self, headers: list[npt.NDArray[np.float64]]) -> None:
        """Raises the same ValueError on every rank when any rank's input is unusable
        or the ranks disagree on the channels, dtype or number of dimensions."""
        keys = [_NDIM, _CHANNELS, _DTYPE, _FEATURES, _MODULE_DTYPE]
        consistent = all(np.array_equal(h[keys], headers[0][keys]) for h in headers)
        if consistent and all(h[_LOCAL_ERROR] == 0 and self._agrees(h) for h in headers):
            return

        def said(rank: int, h: npt.NDArray[np.float64]) -> str:
            module = f"module of {int(h[_FEATURES])} features, {_DTYPES[int(h[_MODULE_DTYPE])]}"
            if h[_LOCAL_ERROR] == 1:
                return f"rank {rank}: {_LOCAL_ERRORS[1]} ({module})"
            what = (
                f"rank {rank}: {_DTYPES[int(h[_DTYPE])]} input of {int(h[_NDIM])} dimensions "
                f"with {int(h[_CHANNELS])} channels ({module})"
            )
            return what + (f"; {_LOCAL_ERRORS[2]}" if h[_LOCAL_ERROR] == 2 else "")

        lo, hi = self._ndim_range
        raise ValueError(
            "SyncBatchNorm: the ranks' inputs do not agree; every rank needs a (N_r, C, *spatial) array with "
            f"{lo} to {hi} dimensions, C the module's num_features, of the module's dtype, the same on every "
            "rank: " + "; ".join(said(rank, h) for rank, h in enumerate(headers))
        )

    # ---- backward ----

    def backward(self, dy: npt.NDArray[Any], /, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """dx of this rank's part; sets this rank's grad_gamma and grad_beta."""
        if self._saved is None:
            dx = super().backward(dy, out)
            self._grads = (_core._BatchNorm.grad_gamma.__get__(self), _core._BatchNorm.grad_beta.__get__(self))
            return dx
        x, mean, invstd, count = self._saved
        usable = (
            isinstance(dy, np.ndarray) and dy.shape == x.shape and dy.dtype == x.dtype and _out_is_usable(out, x)
            and (out is None or out is dy or not np.shares_memory(out, dy))
        )
        C = self.num_features
        sums = (
            F.batch_norm_backward_reduce(dy, x, mean, invstd, self.gamma, self.beta, activation=self.activation)
            if usable
            else np.zeros((2, C))
        )
        gathered = self._comm.allgather(np.concatenate([[0.0 if usable else 1.0], sums.ravel()]))
        bad = [rank for rank, g in enumerate(gathered) if g[0] != 0]
        if bad:
            raise ValueError(
                f"SyncBatchNorm.backward: on rank(s) {bad}, dy is not an array of the forward input's shape "
                "and dtype, or out= is not a writeable array of that shape and dtype apart from x (it may be dy)"
            )
        total = gathered[0][1:].copy()
        for g in gathered[1:]:  # in rank order, the same bits on every rank
            total += g[1:]
        dx = F.batch_norm_backward_elemt(
            dy, x, mean, invstd, total.reshape(2, C), count, self.gamma, out, bias=self.beta,
            activation=self.activation,
        )
        params = np.float32 if self.dtype == np.float16 else self.dtype
        grad_gamma = (sums[1] * invstd).astype(params) if self.affine else None
        grad_beta = sums[0].astype(params) if self.beta is not None else None
        self._grads = (grad_gamma, grad_beta)
        return dx
