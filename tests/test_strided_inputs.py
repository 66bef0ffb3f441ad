"""Any memory layout NumPy can describe gives the reference answer.

Each layout builds an array equal (element by element) to a plain C-ordered
one: negative strides, Fortran order, a channels-last view of an NHWC buffer,
a strided slice, a broadcast (zero-stride) array, a read-only array, an
unaligned buffer and non-native byte order.  x and dy get the layout; the
module must match the reference for training and eval steps, return
C-contiguous native arrays and leave its inputs untouched.
"""

import numpy as np
import pytest

import bnorm
import bnorm.functional as F
from bnorm.testing import reference

CLASSES = {2: bnorm.BatchNorm1d, 3: bnorm.BatchNorm1d, 4: bnorm.BatchNorm2d, 5: bnorm.BatchNorm3d}


def negative_strides(a):
    flipped = a[(slice(None, None, -1),) * a.ndim].copy()
    return flipped[(slice(None, None, -1),) * a.ndim]


def fortran_order(a):
    return np.asfortranarray(a)


def channels_last(a):
    """A view with axis 1 last in memory, e.g. x.transpose(0, 3, 1, 2) of an NHWC array."""
    order = (0,) + tuple(range(2, a.ndim)) + (1,)
    stored = np.ascontiguousarray(a.transpose(order))
    return stored.transpose(np.argsort(order))


def strided_slice(a):
    """Every other element of a twice-as-large buffer along each axis."""
    big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
    big[(slice(None, None, 2),) * a.ndim] = a
    return big[(slice(None, None, 2),) * a.ndim]


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def unaligned(a):
    buffer = bytearray(a.nbytes + 1)
    u = np.frombuffer(buffer, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


def big_endian(a):
    swapped = a.astype(a.dtype.newbyteorder(">"))
    assert not swapped.dtype.isnative
    return swapped


LAYOUTS = [negative_strides, fortran_order, channels_last, strided_slice, read_only, unaligned,
           big_endian]
SHAPES = [(6, 3), (4, 3, 5), (3, 4, 5, 6), (2, 3, 3, 4, 5)]


def sample(rng, shape, dtype):
    x = 3.0 + rng.normal(size=(1, shape[1]) + (1,) * (len(shape) - 2)) + rng.standard_normal(shape)
    return x.astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}D")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_module_with_layout(checks, rng, layout, shape, dtype):
    bn = CLASSES[len(shape)](shape[1], dtype=dtype)
    bn.gamma[...] = rng.uniform(-2, 2, shape[1])
    bn.beta[...] = rng.normal(size=shape[1])
    for training in (True, True, False):
        bn.train(training)
        x_plain, dy_plain = sample(rng, shape, dtype)
        x, dy = layout(x_plain), layout(dy_plain)
        np.testing.assert_array_equal(x, x_plain)
        checks.check_step(bn, x, dy)
        np.testing.assert_array_equal(x, x_plain)  # inputs are not modified
        np.testing.assert_array_equal(dy, dy_plain)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_broadcast_input(checks, rng, dtype):
    """A zero-stride (broadcast, read-only) input: rows repeat, statistics still exact."""
    bn = bnorm.BatchNorm2d(3, dtype=dtype)
    x_row, dy = sample(rng, (1, 3, 4, 5), dtype)
    x = np.broadcast_to(x_row, (6, 3, 4, 5))
    assert x.strides[0] == 0
    checks.check_step(bn, x, np.ascontiguousarray(np.broadcast_to(dy, x.shape)))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_functional_with_layout(checks, rng, layout, dtype):
    shape = (3, 4, 5, 6)
    x_plain, dy_plain = sample(rng, shape, dtype)
    x, dy = layout(x_plain), layout(dy_plain)
    weight, bias = rng.uniform(-2, 2, 4).astype(dtype), rng.normal(size=4).astype(dtype)
    y, save_mean, save_invstd = F.batch_norm(x, None, None, weight, bias, training=True)
    dx, dweight, dbias = F.batch_norm_backward(dy, x, save_mean, save_invstd, weight, training=True)
    mean, _ = reference.batch_stats(x_plain)
    model = checks.Step(x_plain, dtype, 1e-5, mean, True, weight=weight, dy=dy_plain)
    expected = {"y": reference.forward(x_plain, weight, bias, eps=1e-5)}
    expected["dx"], expected["dgamma"], expected["dbeta"] = reference.backward(dy_plain, x_plain, weight)
    for name, value in (("y", y), ("dx", dx), ("dgamma", dweight), ("dbeta", dbias)):
        assert value.dtype == dtype and value.dtype.isnative, name
        model.assert_close(value, expected[name], name)
    checks.assert_output_layout(y, x, "y")
    checks.assert_output_layout(dx, x, "dx")
    np.testing.assert_array_equal(x, x_plain)
