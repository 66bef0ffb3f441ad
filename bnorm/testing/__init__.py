"""Tools for testing batch-norm implementations, with bnorm as the oracle.

bnorm computes batch normalization with PyTorch's exact semantics, with
statistics in double precision (bounds in docs/numerics.md), and
deterministically (bit-identical for every thread count), so it can serve as
the oracle in property-based tests of your own kernels.  This package holds
what such tests need:

``reference``
    A float64 NumPy implementation written straight from the formulas
    (``batch_stats``, ``forward``, ``backward``, ``update_running``,
    ``ReferenceBatchNorm``): slow, but obviously right.  bnorm itself is
    tested against it.
``strategies``
    Hypothesis strategies for valid batch-norm problems: shapes for 1d/2d/3d,
    module options (eps, momentum including None, affine,
    track_running_stats), and inputs with the structure that breaks kernels
    (offsets like 1e4 + noise in float32, constant channels, ties, mixtures
    of scales).  ``problems()`` bundles input, dtype, options, mode, state
    and an upstream gradient.  Needs ``hypothesis`` (a test dependency);
    it is imported on first use, so ``import bnorm.testing`` works without it.
``assert_batch_norm_close(actual, expected, dtype, reduction_size=None, *, what="output")``
    Compares with tolerances derived from the dtype's machine epsilon and
    the number of values per channel (optionally from the problem's
    condition number), and names the worst element when it fails.
``gradcheck(module, x)``
    Checks a float64 module's backward against central finite differences
    of its forward, leaving its running statistics untouched.

Example (the full one is in docs/testing.rst, "Testing your own batch norm with bnorm")::

    from hypothesis import given
    from bnorm.testing import assert_batch_norm_close, reference, strategies as bst

    @given(bst.problems(dims=2, training=True))
    def test_my_batch_norm(p):
        y = my_batch_norm(p.x, p.weight, p.bias, eps=p.eps)
        y_ref = reference.forward(p.x, p.weight, p.bias, eps=p.eps)
        assert_batch_norm_close(y, y_ref, p.dtype, p.reduction_size,
                                x=p.x, weight=p.weight, eps=p.eps)

Nothing here imports torch.
"""

from importlib.util import find_spec as _find_spec

from types import ModuleType
from typing import TYPE_CHECKING

from . import reference

if TYPE_CHECKING:  # imported lazily at run time (see __getattr__)
    from . import strategies
from .assertions import assert_batch_norm_close, batch_norm_tolerance, gradcheck

__all__ = [
    "reference",
    "assert_batch_norm_close",
    "batch_norm_tolerance",
    "gradcheck",
]
if _find_spec("hypothesis") is not None:   # so that `import *` works without hypothesis
    __all__.append("strategies")


def __getattr__(name: str) -> ModuleType:
    # Imported lazily: hypothesis is only a test dependency.
    if name == "strategies":
        import importlib

        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"strategies"})
