"""The batch statistics meet the error bounds docs/numerics.md states, against an
exact reference (rational arithmetic on the input values), on data built to break
them: values spread over many binades, large offsets, a block whose first value
(the shift of the one-pass sums) is an outlier, and many elements (several blocks)."""
import math
from fractions import Fraction

import numpy as np
import pytest

import bnorm

U = 2.0 ** -53  # unit roundoff of double
EPS = 1e-5


def exact_moments(values):
    """Exact mean and biased variance of one channel's values, as Fractions."""
    xs = [Fraction(float(v)) for v in values]
    n = len(xs)
    s1 = sum(xs)
    s2 = sum(v * v for v in xs)
    return s1 / n, (s2 - s1 * s1 / n) / n


def bounds(values, mean):
    """docs/numerics.md: |dmean| <= (n + 4) u (R + |mean|); |dvar| <= (3n + 8) u R (R + |mean|)."""
    n = len(values)
    r = float(np.max(values)) - float(np.min(values))
    return (n + 4) * U * (r + abs(mean)), (3 * n + 8) * U * r * (r + abs(mean))


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
        mean_bound, var_bound = bounds(values, float(exact_mean))
        mean_error = abs(Fraction(float(mean[c])) - exact_mean)
        # var is recovered through 1 / sqrt(var + eps): a few more roundings of var + eps
        var_error = abs(Fraction(float(var[c])) - exact_var)
        var_slack = 8 * U * (float(exact_var) + EPS)
        assert mean_error <= mean_bound, (c, float(mean_error), mean_bound)
        assert var_error <= var_bound + var_slack, (c, float(var_error), var_bound + var_slack)


def test_two_values_mean_is_exact_to_double_rounding():
    # the case: formed in float, x - shift rounded and the mean was 1.550000049
    x = np.array([[0.1], [3.0]], np.float32)
    mean, _ = statistics(x)
    exact = (Fraction(float(np.float32(0.1))) + Fraction(float(np.float32(3.0)))) / 2
    assert mean[0] == float(exact)


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
