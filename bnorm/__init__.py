"""bnorm: batch normalisation for NumPy, in C, with PyTorch's semantics.

    import numpy as np, bnorm
    bn = bnorm.BatchNorm2d(64)
    y = bn(x)               # training mode: batch statistics, running statistics updated
    dx = bn.backward(dy)    # sets bn.grad_gamma, bn.grad_beta
    bn.eval(); y = bn(x)    # running statistics

See bnorm.functional for the stateless functions and bnorm.testing for the float64
reference and the helpers for property-based tests.
"""
try:
    # The compiled extension, first: every other module needs it.
    from ._core import (get_num_threads, set_num_threads, simd_level, simd_path, supported_simd_levels,
                        supported_simd_paths)
except ImportError as _missing:
    raise ImportError(
        f"bnorm's compiled extension bnorm._core cannot be imported ({_missing}). "
        f"This bnorm was imported from {__path__[0]}: probably a source checkout whose "
        "extension was not built (or was built for another Python). In the checkout, run "
        "`pip install -e .` (or `python setup.py build_ext --inplace`); or run Python from "
        "outside the checkout to use an installed bnorm."
    ) from _missing

from . import functional
from ._config import config, show_config
from ._modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .sync import SyncBatchNorm
from ._version import __version__

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "functional",
    "config",
    "show_config",
    "get_num_threads",
    "set_num_threads",
    "simd_level",
    "supported_simd_levels",
    "simd_path",
    "supported_simd_paths",
    "__version__",
]
