"""The batch statistics and gradient sums meet the error bounds docs/numerics.md
states, against an exact reference (rational arithmetic on the input values), on data
built to break them: values spread over many binades, large offsets, an outlier among
the first values of a block (whose mean is the shift of the one-pass sums, and which
must send the block to the double loops), values whose squares overflow float,
float16 extremes, constant channels and many elements (several blocks)."""
import math
from fractions import Fraction

import numpy as np
import pytest

import bnorm
import bnorm.functional as F

U = 2.0 ** -53  # unit roundoff of double
UF = 2.0 ** -24  # of float, in which float32 and float16 data is summed (float lanes)
ETA = 2.0 ** -149  # float's smallest subnormal
K = 4  # BN_STRETCH: values per float lane before it is folded into double
T = 8  # BN_SHIFT_SPREAD: fused.c keeps a lane block when its shift is within sqrt(T) deviations
EPS = 1e-5
# docs/numerics.md, float lanes: |dmean| += sqrt(1 + T)(K + 0.01) u sigma,
# |dvar| += ((1 + T)(3K + 4) + 2 sqrt(1 + T)(K + 0.01) + 1) u sigma^2 + 4 eta
LANE_MEAN = math.sqrt(1 + T) * (K + 0.01) * UF
LANE_VAR = ((1 + T) * (3 * K + 4) + 2 * math.sqrt(1 + T) * (K + 0.01) + 1) * UF


def exact_moments(values):
    """Exact mean and biased variance of one channel's values, as Fractions."""
    xs = [Fraction(float(v)) for v in values]
    n = len(xs)
    s1 = sum(xs)
    s2 = sum(v * v for v in xs)
    return s1 / n, (s2 - s1 * s1 / n) / n


def bounds(values, mean, var, dtype):
    """docs/numerics.md: |dmean| <= (n + 4) u (R + |mean|); |dvar| <= (3n + 8) u R (R + |mean|) in double,
    plus the float lanes' terms for float32 and float16 data."""
    n = len(values)
    r = float(np.max(values)) - float(np.min(values))
    mean_bound, var_bound = (n + 4) * U * (r + abs(mean)), (3 * n + 8) * U * r * (r + abs(mean))
    if np.dtype(dtype) != np.float64:
        mean_bound += LANE_MEAN * math.sqrt(var)
        var_bound += LANE_VAR * var + 4 * ETA
    return mean_bound, var_bound


def statistics(x):
    """bnorm's save_mean and the biased variance recovered from save_invstd."""
    _, mean, invstd = bnorm.functional.batch_norm(x, None, None, training=True, eps=EPS)
    return mean, 1.0 / invstd ** 2 - EPS


def channels_last(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1)).transpose(0, x.ndim - 1, *range(1, x.ndim - 1))


def adversarial_channels(dtype, rng, n):
    """Columns of an (n, C) problem, one adversarial recipe per channel."""
    info = np.finfo(dtype)
    low, high = (-14, 14) if dtype == np.float16 else (-40, 40)
    binades = rng.choice([-1, 1], n) * rng.uniform(1, 2, n) * 2.0 ** rng.integers(low, high, n)
    outlier_first = rng.standard_normal(n)
    outlier_first[0] = 1e3 if dtype == np.float16 else 1e6
    offset = (1e3 if dtype == np.float16 else 1e4) + rng.standard_normal(n)
    tiny_spread = 1.0 + rng.integers(0, 3, n) * float(info.eps)
    cols = [binades, outlier_first, offset, tiny_spread, rng.uniform(-1, 1, n)]
    return np.stack(cols, axis=1).astype(dtype)


def check_channels(x, channel_values):
    mean, var = statistics(x)
    for c, values in enumerate(channel_values):
        exact_mean, exact_var = exact_moments(values)
        mean_bound, var_bound = bounds(values, float(exact_mean), float(exact_var), x.dtype)
        mean_error = abs(Fraction(float(mean[c])) - exact_mean)
        # var is recovered through 1 / sqrt(var + eps): a few more roundings of var + eps
        var_error = abs(Fraction(float(var[c])) - exact_var)
        var_slack = 8 * U * (float(exact_var) + EPS)
        assert mean_error <= mean_bound, (c, float(mean_error), mean_bound)
        assert var_error <= var_bound + var_slack, (c, float(var_error), var_bound + var_slack)


def test_two_values_mean():
    # float64: the mean to double rounding. float32: d = x - shift is formed in float,
    # the mean within the lanes' 12 u sigma (1.5500000119 against 1.5500000007)
    for dtype in (np.float64, np.float32):
        x = np.array([[0.1], [3.0]], dtype)
        mean, _ = statistics(x)
        exact_mean, exact_var = exact_moments(x.ravel())
        if dtype == np.float64:
            assert mean[0] == float(exact_mean)
        else:
            assert abs(Fraction(mean[0]) - exact_mean) <= bounds(x.ravel(), float(exact_mean), float(exact_var),
                                                                 dtype)[0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("n", [2, 37, 3000, 40000])  # 40000 spans several blocks
def test_statistics_within_stated_bound(dtype, layout, n):
    rng = np.random.default_rng(n)
    cols = adversarial_channels(dtype, rng, n)
    # (N, C, L) with N * L = n: rows of a channel 2 apart in NCHW
    x = np.ascontiguousarray(cols.reshape(n // 2 if n > 2 else 1, -1, cols.shape[1]).transpose(0, 2, 1)) \
        if n % 2 == 0 else cols
    if layout == "channels_last" and x.ndim == 3:
        x = channels_last(x)
    values = [x[:, c].ravel() for c in range(x.shape[1])]
    check_channels(x, values)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_large_offset_variance(layout):
    # 1e4 + N(0, 1) in float32: E[x^2] - E[x]^2 in float loses every digit; bnorm keeps 1e-5
    rng = np.random.default_rng(1)
    x = (1e4 + rng.standard_normal((64, 3, 32, 32))).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    _, var = statistics(x)
    for c in range(3):
        v = x[:, c].ravel().astype(np.float64)
        shift = float(v[0])
        d = v - shift  # exact: float32 values within a factor 2 of each other
        n = d.size
        exact_var = (math.fsum(d * d) - math.fsum(d) ** 2 / n) / n  # d * d exact: 24-bit d
        assert abs(var[c] - exact_var) <= 1e-5 * exact_var


def one_channel(values, dtype, width):
    """(N, 1, width) NCHW data: one channel, rows of `width` values (the kernels' rows and blocks)."""
    return np.asarray(values, dtype).reshape(-1, 1, width)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("width", [7 * 7, 28 * 28, 17, 40000])
def test_outlier_first_falls_back_to_double(dtype, width):
    # the first 16 values (the shift's estimate) are an outlier: the shift lies
    # ~30 deviations from the block's mean. Float lanes would round d^2 ~ 1e10 (4e9 for
    # float16) and lose about 1e-4 of the variance; the double loops on these integers
    # are exact up to the last subtraction and division.
    rng = np.random.default_rng(width)
    n = 40000 // width * width
    v = rng.integers(-8, 9, n).astype(np.float64)
    v[:16] = 6e4 if dtype == np.float16 else 1e5
    x = one_channel(v, dtype, width)
    mean, var = statistics(x)
    exact_mean, exact_var = exact_moments(x.ravel())
    assert abs(Fraction(mean[0]) - exact_mean) <= 1e-13 * abs(exact_mean)
    assert abs(Fraction(var[0]) - exact_var) <= 1e-12 * exact_var


@pytest.mark.parametrize("scale", [1e20, 1e37, 1.5e38])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_squares_beyond_float_fall_back_to_double(scale, layout):
    # d^2 overflows a float lane (d up to 3e38 even overflows d): the block is redone in double
    rng = np.random.default_rng(3)
    x = (scale * rng.uniform(-1, 1, (64, 2, 9, 9))).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    check_channels(x, [x[:, c].ravel() for c in range(2)])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float16_extremes(layout):
    # the largest float16 values (d^2 up to 1.7e10, no overflow in float), subnormals
    # only, and both mixed
    rng = np.random.default_rng(4)
    big = rng.choice([-65504.0, 65504.0, 60000.0, -1.0, 0.0], (32, 1, 7, 7))
    tiny = rng.integers(-40, 41, (32, 1, 7, 7)) * 2.0 ** -24
    mixed = np.where(rng.uniform(size=(32, 1, 7, 7)) < 0.5, big, tiny)
    x = np.concatenate([big, tiny, mixed], axis=1).astype(np.float16)
    if layout == "channels_last":
        x = channels_last(x)
    check_channels(x, [x[:, c].ravel() for c in range(3)])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(8, 3, 7, 7), (4, 3, 33, 35), (2, 3, 150, 150)])
def test_constant_channels_are_exact(dtype, layout, shape):
    # variance exactly 0 and y exactly beta, whatever the constant
    values = np.array([1e4 + 0.1, -3.75, 60000.0 if dtype == np.float16 else 3e30], dtype)
    x = np.broadcast_to(values[None, :, None, None], shape).astype(dtype)
    if layout == "channels_last":
        x = channels_last(x)
    pdt = np.float32 if dtype == np.float16 else dtype
    gamma, beta = np.array([1.5, -2.0, 0.25], pdt), np.array([0.5, -1.25, 3.0], pdt)
    y, mean, invstd = F.batch_norm(x, None, None, gamma, beta, training=True, eps=EPS)
    np.testing.assert_array_equal(mean, values.astype(np.float64))
    np.testing.assert_array_equal(invstd, 1 / np.sqrt(np.full(3, EPS)))
    np.testing.assert_array_equal(y, np.broadcast_to(beta.astype(dtype)[None, :, None, None], shape))


def exact_grad_sums(x, dy, mean):
    """Exact sum(dy), sum(dy * (x - mean)) and the sums of their absolute values."""
    m = Fraction(float(mean))
    terms = [(Fraction(float(g)), Fraction(float(g)) * (Fraction(float(v)) - m)) for v, g in zip(x, dy)]
    return (sum(g for g, _ in terms), sum(gx for _, gx in terms),
            sum(abs(g) for g, _ in terms), sum(abs(gx) for _, gx in terms))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_grad_sums_within_stated_bound(dtype, layout):
    # docs/numerics.md: |d sum(g)| <= (K - 1 + 0.01) u sum|g|, |d sum(g (x - mean))| <=
    # (K + 2.01) u sum|g (x - mean)| + 2.01 u^2 |mean| sum|g| + 2 n eta (float lanes), next
    # to the double sums' (n + 4) u_d of the same sums of absolute values
    rng = np.random.default_rng(6)
    shape = (24, 4, 7, 7)
    x = rng.standard_normal(shape) * [[[[1]], [[1]], [[1e-3]], [[100]]]] + [[[[0]], [[1e3]], [[1]], [[-5]]]]
    dy = rng.standard_normal(shape) * [[[[1]], [[1e-4]], [[10]], [[1]]]]
    dy[:, 3, :3] = 1e4  # a few large gradients among small ones
    x, dy = x.astype(dtype), dy.astype(dtype)
    mean = np.array([float(x[:, c].astype(np.float64).mean()) for c in range(shape[1])])
    invstd = np.ones(shape[1])
    if layout == "channels_last":
        x, dy = channels_last(x), channels_last(dy)
    sums = F.batch_norm_backward_reduce(dy, x, mean, invstd)
    n = x.size // shape[1]
    lane = np.dtype(dtype) != np.float64
    for c in range(shape[1]):
        s_g, s_gx, abs_g, abs_gx = exact_grad_sums(x[:, c].ravel(), dy[:, c].ravel(), mean[c])
        double = (n + 4) * U
        bound_g = (double + ((K - 1 + 0.01) * UF if lane else 0)) * float(abs_g)
        bound_gx = (double + ((K + 2.01) * UF if lane else 0)) * float(abs_gx)
        if lane:
            bound_gx += 2.01 * UF ** 2 * abs(mean[c]) * float(abs_g) + 2 * n * ETA
        assert abs(Fraction(sums[0, c]) - s_g) <= bound_g, (c, float(abs(Fraction(sums[0, c]) - s_g)), bound_g)
        assert abs(Fraction(sums[1, c]) - s_gx) <= bound_gx, (c, float(abs(Fraction(sums[1, c]) - s_gx)), bound_gx)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float_lane_errors_are_far_below_the_bound(layout):
    # typical data: the shift within a fraction of a deviation of the mean, roundings
    # that cancel; the measured variance error stays 10x under LANE_VAR (a guard
    # against a lane scheme that meets its bound only by luck of the data)
    rng = np.random.default_rng(7)
    x = (3 + rng.standard_normal((16, 2, 28, 28))).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    _, var = statistics(x)
    for c in range(2):
        _, exact_var = exact_moments(x[:, c].ravel())
        assert abs(Fraction(var[c]) - exact_var) <= 0.1 * LANE_VAR * exact_var
