"""The split phases of bnorm.functional in one process: a batch cut into parts
(some empty) and run through batch_norm_stats, batch_norm_gather_stats_with_counts,
batch_norm_elemt, batch_norm_backward_reduce and batch_norm_backward_elemt equals
batch_norm / batch_norm_backward on the whole batch (bit for bit with one part) and
the float64 reference; and their arguments are checked."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bnorm.functional as F
from test_statistics_bound import LANE_MEAN, LANE_VAR  # docs/numerics.md's float-lane terms

UNIT = {np.float16: 2.0**-11, np.float32: 2.0**-24, np.float64: 2.0**-53}


def channels_last(a):
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1)


def run_phases(parts, dys, weight, bias, activation, running=None):
    """The phases over parts, the exchanges done by stacking and summing in part order."""
    moments = np.stack([F.batch_norm_stats(p) for p in parts])
    mean, invstd, count = F.batch_norm_gather_stats_with_counts(moments, *(running or (None, None)), 0.1, 1e-5)
    ys = [F.batch_norm_elemt(p, mean, invstd, weight, bias, activation=activation) for p in parts]
    sums = np.zeros((2, len(mean)))
    for p, d in zip(parts, dys):
        sums += F.batch_norm_backward_reduce(d, p, mean, invstd, weight, bias, activation=activation)
    dxs = [F.batch_norm_backward_elemt(d, p, mean, invstd, sums, count, weight, bias=bias, activation=activation)
           for p, d in zip(parts, dys)]
    return mean, invstd, count, np.concatenate(ys), np.concatenate(dxs), sums


@st.composite
def batches(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    ndim = draw(st.integers(2, 4))
    shape = (draw(st.integers(2, 9)), draw(st.integers(1, 4)), *draw(st.lists(st.integers(1, 5), min_size=ndim - 2,
                                                                              max_size=ndim - 2)))
    cuts = sorted(draw(st.lists(st.integers(0, shape[0]), min_size=0, max_size=4)))
    return dtype, shape, cuts, ndim >= 3 and draw(st.booleans()), draw(st.sampled_from([None, "relu"])), \
        draw(st.sampled_from([0.0, 1e3])), draw(st.integers(0, 2**32 - 1))


@given(batch=batches())
def test_phases_over_parts_equal_the_whole_batch(batch, reference):
    dtype, shape, cuts, cl, activation, offset, seed = batch
    rng = np.random.default_rng(seed)
    pdt = np.float32 if dtype == np.float16 else dtype
    offset = offset if dtype != np.float16 else 0.0
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = (1 + 0.5 * rng.standard_normal(shape[1])).astype(pdt)
    bias = (0.5 * rng.standard_normal(shape[1])).astype(pdt)
    edges = [0, *cuts, shape[0]]
    layout = channels_last if cl else np.ascontiguousarray
    parts = [layout(x[a:b]) for a, b in zip(edges, edges[1:])]
    dys = [layout(dy[a:b]) for a, b in zip(edges, edges[1:])]
    rm_whole, rv_whole = np.zeros(shape[1], pdt), np.ones(shape[1], pdt)
    rm_parts, rv_parts = rm_whole.copy(), rv_whole.copy()
    # the whole batch in the parts' layout, which decides the kernels' blocks and so the bits
    y1, mean1, invstd1 = F.batch_norm(layout(x), rm_whole, rv_whole, weight, bias, training=True,
                                      activation=activation)
    dx1, dw1, db1 = F.batch_norm_backward(layout(dy), layout(x), mean1, invstd1, weight, bias=bias,
                                          activation=activation)
    mean, invstd, count, y, dx, sums = run_phases(parts, dys, weight, bias, activation, (rm_parts, rv_parts))
    assert count == x.size // shape[1]
    u = UNIT[dtype]
    # the parts' blocks are not the whole batch's: float32 and float16 statistics differ
    # by up to twice the float lanes' bound (each is within it of the exact ones)
    lane_mean, lane_var = (0.0, 0.0) if dtype == np.float64 else (LANE_MEAN, LANE_VAR)
    sigma = 1 / invstd1
    np.testing.assert_allclose(mean, mean1, rtol=1e-13, atol=1e-13 + 2 * lane_mean * sigma.max())
    np.testing.assert_allclose(invstd, invstd1, rtol=1e-11 + lane_var)
    np.testing.assert_allclose(rm_parts, rm_whole, rtol=4 * UNIT[pdt],
                               atol=4 * UNIT[pdt] + 0.2 * lane_mean * sigma.max())
    # and the double arithmetic's (3n + 8) u_d R (R + |mean|) of each variance, times the
    # momentum and at most 2 for the unbiasing
    n = x.size // shape[1]
    axes = tuple(a for a in range(x.ndim) if a != 1)
    r = x.max(axis=axes).astype(np.float64) - x.min(axis=axes)
    double_var = (3 * n + 8) * UNIT[np.float64] * r * (r + np.abs(mean1))
    np.testing.assert_allclose(rv_parts, rv_whole, rtol=4 * UNIT[pdt] + 0.2 * lane_var, atol=0.4 * double_var.max())
    np.testing.assert_allclose(y.astype(np.float64), y1, rtol=0, atol=1e-10 + 4 * u * (1 + np.abs(y1)).max()
                               + np.abs(weight).max() * (lane_var * (np.abs(y1).max() + np.abs(bias).max())
                                                         / np.abs(weight).min() + 2 * lane_mean))
    np.testing.assert_allclose((sums[1] * invstd).astype(pdt), dw1, atol=1e-9 + 64 * UNIT[pdt] * x.size)
    np.testing.assert_allclose(sums[0].astype(pdt), db1, atol=1e-9 + 64 * UNIT[pdt] * x.size)
    # against the float64 reference, away from ReLU's kink
    y64 = reference.forward(x, weight, bias)
    dx64 = reference.backward(np.where(y64 > 0, dy, 0) if activation else dy, x, weight)[0]
    keep = np.abs(y64) > 1e-2 if activation else np.ones(shape, bool)
    np.testing.assert_allclose(np.asarray(y, np.float64)[keep], np.maximum(y64, 0)[keep] if activation else y64[keep],
                               rtol=0, atol=1e-9 + 16 * u * (1 + np.abs(y64)).max())
    np.testing.assert_allclose(np.asarray(dx, np.float64)[keep], dx64[keep], rtol=0,
                               atol=1e-8 + 256 * u * (1 + np.abs(dx64)).max())
    # one part: the fused kernels' bits
    one = run_phases([layout(x)], [layout(dy)], weight, bias, activation)
    assert np.array_equal(one[0], mean1) and np.array_equal(one[1], invstd1)
    assert np.array_equal(one[3], y1) and np.array_equal(one[4], dx1)
    assert np.array_equal((one[5][1] * one[1]).astype(pdt), dw1) and np.array_equal(one[5][0].astype(pdt), db1)


def test_large_offset_loses_nothing(reference):
    """1e4 + N(0, 1) in float32 over 3 parts: the statistics within the float lanes' bound
    (docs/numerics.md), far better than the 1e-5 design.md asks of the variance."""
    rng = np.random.default_rng(5)
    x = (1e4 + rng.standard_normal((30, 2, 17))).astype(np.float32)
    moments = np.stack([F.batch_norm_stats(p) for p in (x[:7], x[7:7], x[7:])])
    mean, invstd, _ = F.batch_norm_gather_stats_with_counts(moments)
    ref_mean, ref_var = reference.batch_stats(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-15, atol=LANE_MEAN * np.sqrt(ref_var).max())
    np.testing.assert_allclose(invstd, 1 / np.sqrt(ref_var + 1e-5), rtol=1e-12 + LANE_VAR / 2)


def test_empty_parts_and_an_empty_batch():
    empty = np.zeros((0, 3, 4), np.float32)
    moments = F.batch_norm_stats(empty)
    assert moments.shape == (3, 3) and not moments.any()
    mean, invstd, count = F.batch_norm_gather_stats_with_counts(np.stack([moments, moments]))
    assert count == 0 and np.isnan(mean).all() and np.isnan(invstd).all()
    assert F.batch_norm_elemt(empty, mean, invstd).shape == empty.shape
    sums = F.batch_norm_backward_reduce(empty, empty, mean, invstd)
    assert sums.shape == (2, 3) and not sums.any()
    assert F.batch_norm_backward_elemt(empty, empty, mean, invstd, sums, 0).shape == empty.shape


def test_running_statistics_use_the_whole_batch_count():
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    rm, rv = np.zeros(2), np.ones(2)
    F.batch_norm_gather_stats_with_counts(np.stack([F.batch_norm_stats(x[:1]), F.batch_norm_stats(x[1:])]), rm, rv,
                                          momentum=0.5)
    np.testing.assert_allclose(rm, 0.5 * x.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * x.var(axis=0, ddof=1), rtol=1e-15)


def test_bad_arguments_are_named():
    x = np.ones((4, 3), np.float32)
    moments = F.batch_norm_stats(x)
    with pytest.raises(ValueError, match=r"moments: expected shape \(parts, 3, any\)"):
        F.batch_norm_gather_stats_with_counts(moments)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm_gather_stats_with_counts(F.batch_norm_stats(x[:1])[None])
    bad = np.stack([moments]).copy()
    bad[0, 0, 1] = 2.5
    with pytest.raises(ValueError, match="part 0, channel 1"):
        F.batch_norm_gather_stats_with_counts(bad)
    with pytest.raises(TypeError, match="momentum=None"):
        F.batch_norm_gather_stats_with_counts(moments[None], momentum=None)
    with pytest.raises(ValueError, match="given together"):
        F.batch_norm_gather_stats_with_counts(moments[None], np.zeros(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        F.batch_norm_gather_stats_with_counts(moments[None], np.zeros(3, np.int64), np.zeros(3, np.int64))
    mean, invstd, count = F.batch_norm_gather_stats_with_counts(moments[None])
    with pytest.raises(ValueError, match=r"mean: expected shape \(3,\)"):
        F.batch_norm_elemt(x, mean[:2], invstd)
    with pytest.raises(TypeError, match="x: expected a numpy.ndarray"):
        F.batch_norm_stats([[1.0]])
    memory = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match="out: must be x itself or not overlap it"):
        F.batch_norm_elemt(memory[:4], mean, invstd, out=memory[1:])
    with pytest.raises(ValueError, match="count: expected the number of values per channel in the whole batch"):
        F.batch_norm_backward_elemt(x, x, mean, invstd, np.zeros((2, 3)), count - 1)
    with pytest.raises(ValueError, match=r"sums: expected shape \(2, 3\)"):
        F.batch_norm_backward_elemt(x, x, mean, invstd, np.zeros(3), count)
    with pytest.raises(ValueError, match=r"dy: expected shape"):
        F.batch_norm_backward_reduce(x[:2], x, mean, invstd)
