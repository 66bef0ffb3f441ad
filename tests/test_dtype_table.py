"""The kernels' dtype table as Python sees it: bnorm._core.DTYPES, the dtypes the
module type and the functional layer take, and the lists their messages give."""
import numpy as np
import pytest

import bnorm
from bnorm import _core, functional
from bnorm.testing import strategies


def test_dtypes_names_the_float_types_of_the_table():
    assert _core.DTYPES[:2] == ("float32", "float64")
    assert set(_core.DTYPES) <= {"float16", "float32", "float64"}
    assert {dt.name for dt in strategies.ALL_DTYPES} == set(_core.DTYPES)


@pytest.mark.parametrize("name", _core.DTYPES)
def test_every_listed_dtype_is_taken_with_its_parameter_dtype(name):
    bn = bnorm.BatchNorm1d(3, dtype=name)
    x = np.arange(12, dtype=name).reshape(4, 3)
    y = bn(x)
    assert y.dtype == np.dtype(name)
    param = np.float32 if name == "float16" else np.dtype(name)  # PyTorch's mixed precision
    assert bn.gamma.dtype == param and bn.running_var.dtype == param
    expected = (x - x.mean(axis=0, dtype=np.float64)) / np.sqrt(x.var(axis=0, dtype=np.float64) + 1e-5)
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=0, atol=4 * np.finfo(name).eps * 2)


def test_messages_list_exactly_the_supported_dtypes():
    listed = ", ".join(_core.DTYPES[:-1]) + " or " + _core.DTYPES[-1]
    with pytest.raises(TypeError, match=f"dtype must be {listed}, got int32"):
        bnorm.BatchNorm2d(3, dtype=np.int32)
    with pytest.raises(TypeError, match=f"x: expected a {listed} array, got dtype int8"):
        functional.batch_norm(np.zeros((2, 3), np.int8), training=True)
