"""bnorm.testing.strategies generates float16 problems when asked, valid for a
float16 module, and bnorm's float16 results pass the toolkit's float16 tolerance."""
import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings

from bnorm.testing import assert_batch_norm_close
from bnorm.testing import strategies as bst


def test_float16_appears_with_all_dtypes():
    p = find(bst.problems(dims=2, dtypes=bst.ALL_DTYPES), lambda p: p.dtype == np.float16)
    assert p.x.dtype == np.float16 and p.dy.dtype == np.float16
    # a float16 module keeps its parameters and running statistics in float32
    assert all(v.dtype == np.float32 for k, v in p.state.items() if k != "num_batches_tracked")


def test_default_dtypes_are_unchanged():
    assert bst.FLOAT_DTYPES == (np.dtype(np.float32), np.dtype(np.float64))
    assert bst.ALL_DTYPES == (np.dtype(np.float16),) + bst.FLOAT_DTYPES


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=bst.problems(dims=(0, 1, 2), dtypes=np.float16, training=None))
def test_float16_problems_pass_the_float16_tolerance(p):
    assert np.isfinite(p.x).all() and np.abs(p.x).max(initial=0) <= 2.0 ** 14
    y = p.bnorm_module()(p.x)
    y_ref = p.reference_module()(p.x)
    assert y.dtype == np.float16
    assert_batch_norm_close(y, y_ref, np.float16, p.reduction_size, what="output", x=p.x,
                            weight=p.weight, eps=p.eps)


def test_float16_tolerance_catches_a_wrong_output():
    p = find(bst.problems(dims=2, dtypes=np.float16, max_offset=0, kinds=("normal",)),
             lambda p: p.x.size >= 64)
    y_ref = p.reference_module()(p.x)
    # The generic formula takes float16 as the compute precision (eps 2**-10, growth
    # 1 + sqrt(M)), so it is loose: a wrong beta (an offset of the output's scale) is caught.
    wrong = (y_ref + np.abs(y_ref).max()).astype(np.float16)
    with pytest.raises(AssertionError):
        assert_batch_norm_close(wrong, y_ref, np.float16, p.reduction_size, what="output", x=p.x,
                                weight=p.weight, eps=p.eps)
