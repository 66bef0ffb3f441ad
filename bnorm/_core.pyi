"""Type stubs of the C extension bnorm._core."""
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

_Array = npt.NDArray[Any]
# An array that the constructor's options (affine=False, bias=False,
# track_running_stats=False) or a missing backward() make None. Typed with
# typeshed's "Any trick" (X | Any, not X | None): `bn.gamma[...] = 2.0` and
# `bn.running_mean.shape` type-check as the docs write them, without an
# `is not None` check for a module whose options guarantee the array.
_MaybeArray = _Array | Any

# NumPy names of the dtypes this build takes, in the order of the kernels' dtype table
DTYPES: tuple[str, ...]

@disjoint_base
class _BatchNorm:
    _ndim_range: tuple[int, int]
    num_features: int
    eps: float
    affine: bool
    track_running_stats: bool
    num_batches_tracked: int
    training: bool
    momentum: float | None
    gamma: _MaybeArray
    beta: _MaybeArray
    # torch's names: the same arrays as gamma and beta
    weight: _MaybeArray
    bias: _MaybeArray
    running_mean: _MaybeArray
    running_var: _MaybeArray
    @property
    def activation(self) -> str | None: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def grad_gamma(self) -> _MaybeArray: ...
    @property
    def grad_beta(self) -> _MaybeArray: ...
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
    ) -> "_BatchNorm": ...
    def _get_state(
        self,
    ) -> tuple[_Array | None, _Array | None, _Array | None, _Array | None, int]: ...
    def _set_state(
        self,
        gamma: _Array | None,
        beta: _Array | None,
        running_mean: _Array | None,
        running_var: _Array | None,
        num_batches_tracked: int | None,
        /,
    ) -> None: ...
    def forward(self, x: _Array, /, out: _Array | None = None) -> _Array: ...
    def __call__(self, x: _Array, /, out: _Array | None = None) -> _Array: ...
    def backward(self, dy: _Array, /, out: _Array | None = None) -> _Array: ...
    def train(self, mode: bool = True) -> "_BatchNorm": ...
    def eval(self) -> "_BatchNorm": ...

def batch_norm(
    x: _Array,
    running_mean: _Array | None = None,
    running_var: _Array | None = None,
    weight: _Array | None = None,
    bias: _Array | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    out: _Array | None = None,
    *,
    activation: str | None = None,
) -> tuple[_Array, npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def batch_norm_backward(
    dy: _Array,
    x: _Array,
    save_mean: npt.ArrayLike,
    save_invstd: npt.ArrayLike,
    weight: _Array | None = None,
    training: bool = True,
    out: _Array | None = None,
    *,
    bias: _Array | None = None,
    activation: str | None = None,
) -> tuple[_Array, _Array, _Array]: ...
def batch_norm_stats(x: _Array) -> npt.NDArray[np.float64]: ...
def batch_norm_gather_stats_with_counts(
    moments: npt.ArrayLike,
    running_mean: _Array | None = None,
    running_var: _Array | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]: ...
def batch_norm_elemt(
    x: _Array,
    mean: npt.ArrayLike,
    invstd: npt.ArrayLike,
    weight: _Array | None = None,
    bias: _Array | None = None,
    out: _Array | None = None,
    *,
    activation: str | None = None,
) -> _Array: ...
def batch_norm_backward_reduce(
    dy: _Array,
    x: _Array,
    mean: npt.ArrayLike,
    invstd: npt.ArrayLike,
    weight: _Array | None = None,
    bias: _Array | None = None,
    *,
    activation: str | None = None,
) -> npt.NDArray[np.float64]: ...
def batch_norm_backward_elemt(
    dy: _Array,
    x: _Array,
    mean: npt.ArrayLike,
    invstd: npt.ArrayLike,
    sums: npt.ArrayLike,
    count: int,
    weight: _Array | None = None,
    out: _Array | None = None,
    *,
    bias: _Array | None = None,
    activation: str | None = None,
) -> _Array: ...
def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def simd_level() -> str: ...
def supported_simd_levels() -> tuple[str, ...]: ...
def simd_path() -> str: ...
def supported_simd_paths() -> tuple[str, ...]: ...
def _select_simd_level(name: str, /) -> None: ...
def _output_cache_info() -> dict[str, int]: ...
def _release_output_cache() -> int: ...
def _set_output_cache_limit(nbytes: int, /) -> int: ...
