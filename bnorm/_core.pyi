"""Type stubs of the C extension bnorm._core."""
from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

_Float = np.float32 | np.float64
_Array = npt.NDArray[Any]

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
    gamma: _Array | None
    beta: _Array | None
    # torch's names: the same arrays as gamma and beta
    weight: _Array | None
    bias: _Array | None
    running_mean: _Array | None
    running_var: _Array | None
    @property
    def activation(self) -> str | None: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def grad_gamma(self) -> _Array | None: ...
    @property
    def grad_beta(self) -> _Array | None: ...
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
def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...
def simd_path() -> str: ...
def supported_simd_paths() -> tuple[str, ...]: ...
def _select_simd_path(name: str, /) -> None: ...
def _output_cache_info() -> dict[str, int]: ...
def _release_output_cache() -> int: ...
def _set_output_cache_limit(nbytes: int, /) -> int: ...
