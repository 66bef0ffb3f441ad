"""Every bad input of the contract's "Exceptions" section: the type and the message.

Messages are checked for their meaningful part: what was expected and what
arrived, so a user can fix the call from the message alone.
"""

import contextlib
import re

import numpy as np
import pytest

import bnorm


@contextlib.contextmanager
def raises(exc_type, *patterns):
    """pytest.raises(exc_type), and the message must match every regex in patterns."""
    with pytest.raises(exc_type) as info:
        yield info
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not found in {exc_type.__name__} message {message!r}"


def trained(bn_cls=bnorm.BatchNorm2d, shape=(2, 3, 4, 4), **kwargs):
    """A module that has run one forward (so that backward is allowed)."""
    bn = bn_cls(shape[1], **kwargs)
    bn(np.random.default_rng(0).standard_normal(shape).astype(bn.dtype))
    return bn


# ----------------------------------------------------------------------------
# inputs to forward and backward
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, type_name", [([[1.0, 2.0], [3.0, 4.0]], "list"), (3.0, "float"),
                                              ((1.0, 2.0), "tuple")])
def test_input_must_be_ndarray(value, type_name):
    with raises(TypeError, r"expected a numpy\.ndarray, got " + type_name):
        bnorm.BatchNorm1d(2)(value)
    with raises(TypeError, r"expected a numpy\.ndarray, got " + type_name):
        trained(bnorm.BatchNorm1d, (3, 2)).backward(value)


NON_FLOAT = [np.int32, np.int64, np.uint8, np.bool_, object, "<U3", np.complex64, np.complex128,
             [("a", np.float32), ("b", np.float32)]]


@pytest.mark.parametrize("dtype", NON_FLOAT, ids=lambda d: str(np.dtype(d)))
@pytest.mark.parametrize("module_dtype", ["float32", "float64"])
def test_non_float_input_dtype(dtype, module_dtype):
    x = np.zeros((2, 3, 2, 2), dtype=dtype)
    received = re.escape(str(np.dtype(dtype)))
    with raises(TypeError, received, module_dtype):
        bnorm.BatchNorm2d(3, dtype=module_dtype)(x)


@pytest.mark.parametrize("module_dtype, given", [("float32", "float64"), ("float64", "float32"),
                                                 ("float32", "float16")])
def test_float_dtype_mismatch(module_dtype, given):
    # contract: "expected float32 input, got float64; convert with x.astype(np.float32)"
    with raises(TypeError, rf"expected (a )?{module_dtype}\b.*got (dtype )?{given}\b",
                rf"x\.astype\(np\.{module_dtype}\)"):
        bnorm.BatchNorm2d(3, dtype=module_dtype)(np.zeros((2, 3, 2, 2), dtype=given))


@pytest.mark.parametrize("cls, ndim, expected", [
    (bnorm.BatchNorm1d, 1, "2D or 3D"), (bnorm.BatchNorm1d, 4, "2D or 3D"),
    (bnorm.BatchNorm2d, 3, "4D"), (bnorm.BatchNorm2d, 5, "4D"), (bnorm.BatchNorm2d, 2, "4D"),
    (bnorm.BatchNorm3d, 4, "5D"), (bnorm.BatchNorm3d, 6, "5D"),
])
def test_wrong_ndim(cls, ndim, expected):
    x = np.zeros((2, 3, 2, 2, 2, 2)[:ndim], dtype=np.float32)
    with raises(ValueError, rf"expected {expected} input \(got {ndim}D input\)"):
        cls(3)(x)


@pytest.mark.parametrize("training", [True, False])
def test_wrong_channel_count(training):
    bn = bnorm.BatchNorm2d(64).train(training)
    with raises(ValueError, r"expected 64 channels \(axis 1\), got 32"):
        bn(np.zeros((2, 32, 3, 3), dtype=np.float32))


@pytest.mark.parametrize("cls, shape", [(bnorm.BatchNorm1d, (1, 3)), (bnorm.BatchNorm1d, (1, 3, 1)),
                                        (bnorm.BatchNorm2d, (1, 3, 1, 1)),
                                        (bnorm.BatchNorm3d, (1, 3, 1, 1, 1))])
@pytest.mark.parametrize("options", [{}, {"track_running_stats": False}], ids=repr)
def test_one_value_per_channel_when_normalising_with_batch_statistics(cls, shape, options):
    """torch raises also in eval mode when there are no running statistics to use."""
    message = (r"Expected more than 1 value per channel when training, got input size "
               + re.escape(str(shape)))
    with raises(ValueError, message):
        cls(3, **options)(np.ones(shape, dtype=np.float32))
    if options:
        with raises(ValueError, message):
            cls(3, **options).eval()(np.ones(shape, dtype=np.float32))


# ----------------------------------------------------------------------------
# constructor
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc_type, patterns", [
    ({"num_features": 0}, ValueError, ["num_features", r"\b0\b"]),
    ({"num_features": -3}, ValueError, ["num_features", "-3"]),
    ({"eps": 0.0}, ValueError, ["eps", r"0\.0|\b0\b"]),
    ({"eps": -1e-5}, ValueError, ["eps", r"-1e-05"]),
    ({"eps": float("nan")}, ValueError, ["eps", "nan"]),
    ({"eps": float("inf")}, ValueError, ["eps", "inf"]),
    ({"momentum": float("nan")}, ValueError, ["momentum", "nan"]),
    ({"momentum": float("inf")}, ValueError, ["momentum", "inf"]),
    ({"momentum": "0.1"}, TypeError, ["momentum", "str"]),
    ({"eps": "1e-5"}, TypeError, ["eps", "str"]),
    ({"num_features": 8.0}, TypeError, ["num_features", "int", "float", r"8\.0"]),
    ({"bias2": True}, TypeError, ["bias2", "BatchNorm2d"]),
    ({"dtype": np.int32}, TypeError, ["dtype", "int32"]),
    ({"dtype": np.complex128}, TypeError, ["dtype", "complex128"]),
], ids=lambda v: repr(v) if isinstance(v, dict) else "")
def test_constructor_arguments(kwargs, exc_type, patterns):
    kwargs = {"num_features": 3, **kwargs}
    with raises(exc_type, *patterns):
        bnorm.BatchNorm2d(**kwargs)


@pytest.mark.parametrize("momentum", [0.0, 1.0, None, -1.2, 1.5])
def test_momentum_bounds_are_allowed(momentum):
    assert bnorm.BatchNorm2d(3, momentum=momentum).momentum == momentum


# ----------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------

def test_backward_before_forward():
    with raises(RuntimeError, "before forward"):
        bnorm.BatchNorm2d(3).backward(np.zeros((2, 3, 4, 4), dtype=np.float32))


@pytest.mark.parametrize("dy_shape", [(2, 3, 4, 5), (2, 3, 16), (1, 3, 4, 4)])
def test_backward_dy_shape(dy_shape):
    bn = trained()
    with raises(ValueError, re.escape(str((2, 3, 4, 4))), re.escape(str(dy_shape))):
        bn.backward(np.zeros(dy_shape, dtype=np.float32))


@pytest.mark.parametrize("dy_dtype", [np.float64, np.int32])
def test_backward_dy_dtype(dy_dtype):
    bn = trained()
    with raises(TypeError, "float32", np.dtype(dy_dtype).name):
        bn.backward(np.zeros((2, 3, 4, 4), dtype=dy_dtype))


# ----------------------------------------------------------------------------
# attributes
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_attribute_assignment_wrong_shape(name):
    bn = bnorm.BatchNorm2d(3)
    before = getattr(bn, name).copy()
    with raises(ValueError, r"\(3,\)", r"\(4,\)"):
        setattr(bn, name, np.ones(4, dtype=np.float32))
    with raises(ValueError, r"\(3,\)", r"\(1, 3\)"):
        setattr(bn, name, np.ones((1, 3), dtype=np.float32))
    np.testing.assert_array_equal(getattr(bn, name), before)


@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_attribute_assignment_wrong_dtype(name):
    bn = bnorm.BatchNorm2d(3)
    with raises(TypeError, "float32", "float64"):
        setattr(bn, name, np.ones(3, dtype=np.float64))


@pytest.mark.parametrize("name, value", [("num_features", 4), ("affine", False), ("track_running_stats", False),
                                         ("dtype", np.dtype(np.float64))])
def test_read_only_attributes(name, value):
    bn = bnorm.BatchNorm2d(3)
    before = getattr(bn, name)
    with pytest.raises(AttributeError):
        setattr(bn, name, value)
    assert getattr(bn, name) == before


# ----------------------------------------------------------------------------
# load_state_dict
# ----------------------------------------------------------------------------

def good_state():
    return bnorm.BatchNorm2d(3).state_dict()


def test_state_dict_missing_key():
    state = good_state()
    del state["running_var"]
    with raises(RuntimeError, "(?i)missing", "running_var"):
        bnorm.BatchNorm2d(3).load_state_dict(state)


def test_state_dict_unexpected_key():
    state = good_state()
    state["running_std"] = np.ones(3, dtype=np.float32)
    with raises(RuntimeError, "(?i)unexpected", "running_std"):
        bnorm.BatchNorm2d(3).load_state_dict(state)


@pytest.mark.parametrize("key, shape", [("weight", (4,)), ("running_mean", (3, 1)),
                                        ("num_batches_tracked", (1,))])
def test_state_dict_wrong_shape(key, shape):
    state = good_state()
    state[key] = np.ones(shape, dtype=state[key].dtype)
    with raises(ValueError, re.escape(key), re.escape(str(shape))):
        bnorm.BatchNorm2d(3).load_state_dict(state)


@pytest.mark.parametrize("key, value", [("bias", np.array(["a", "b", "c"])), ("running_var", "ones"),
                                        ("num_batches_tracked", np.array("7"))])
def test_state_dict_non_numeric(key, value):
    state = good_state()
    state[key] = value
    with raises(TypeError, re.escape(key)):
        bnorm.BatchNorm2d(3).load_state_dict(state)
