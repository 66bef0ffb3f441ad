"""Tests of bnorm.testing: the Hypothesis strategies, assert_batch_norm_close and gradcheck.

Three kinds of checks:
* the strategies generate only valid problems (and do generate the hard ones);
* bnorm agrees with the float64 reference under assert_batch_norm_close on
  generated problems, and gradcheck accepts bnorm's backward;
* the tools have teeth: a user's property test of a deliberately wrong
  implementation (unbiased variance, eps outside the square root,
  E[x^2] - E[x]^2 in float32, Keras momentum, a backward without the mean
  term...) fails with an AssertionError.
"""


import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import bnorm
from bnorm.testing import assert_batch_norm_close, batch_norm_tolerance, gradcheck, reference
from bnorm.testing import strategies as bst

FAST = settings(max_examples=60, deadline=None)
# A user's property test that is expected to fail: deterministic, no example
# database (so runs do not influence each other), one error re-raised.
USER_TEST = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                     report_multiple_bugs=False, suppress_health_check=[HealthCheck.too_slow])
FIND = settings(max_examples=2000, deadline=None, derandomize=True, database=None)
ALL_DIMS = (0, 1, 2, 3)
WELL_CONDITIONED = ("normal", "uniform", "integers", "mixture")


# ----------------------------------------------------------------------------
# "user" implementations, correct and deliberately wrong
# ----------------------------------------------------------------------------

def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _pc(v, x):
    return np.asarray(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def numpy_batch_norm(x, weight=None, bias=None, eps=1e-5, *, bug=None):
    """Training-mode batch norm written as a user would, in x's own precision.

    Returns (y, batch mean, biased batch var).  ``bug`` injects a known mistake:
    "unbiased_var" normalises with the unbiased variance, "eps_outside_sqrt"
    divides by sqrt(var) + eps, "naive_var" computes var = E[x^2] - E[x]^2.
    """
    dt = x.dtype
    axes = _axes(x)
    M = x.size // x.shape[1]
    mean = x.mean(axis=axes, dtype=dt)
    if bug == "naive_var":
        var = np.maximum((x * x).mean(axis=axes, dtype=dt) - mean * mean, 0).astype(dt)
    else:
        var = ((x - _pc(mean, x)) ** 2).mean(axis=axes, dtype=dt)
    norm_var = var * dt.type(M / (M - 1)) if bug == "unbiased_var" else var
    if bug == "eps_outside_sqrt":
        y = (x - _pc(mean, x)) / (np.sqrt(_pc(norm_var, x)) + dt.type(eps))
    else:
        y = (x - _pc(mean, x)) / np.sqrt(_pc(norm_var, x) + dt.type(eps))
    if weight is not None:
        y = y * _pc(weight, x) + _pc(bias, x)
    return y.astype(dt), mean, var


def numpy_update_running(running_mean, running_var, mean, var, M, momentum, *, bug=None):
    """Running statistics update; bug="keras_momentum" weighs the old value by momentum."""
    unbiased = var * (M / (M - 1))
    m = momentum
    if bug == "keras_momentum":
        new_mean, new_var = m * running_mean + (1 - m) * mean, m * running_var + (1 - m) * unbiased
    else:
        new_mean, new_var = (1 - m) * running_mean + m * mean, (1 - m) * running_var + m * unbiased
    return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


def _momentum_used(p):
    """The m of the update for a training step from p's state (None = cumulative average)."""
    if p.momentum is not None:
        return p.momentum
    return 1.0 / (int(p.state["num_batches_tracked"]) + 1)


class WrongBackward:
    """Wraps a module and replaces backward by a deliberately wrong one.

    bug: "no_mean_term" (dx without - dbeta / M), "dgamma_without_invstd"
    (dgamma = sum(dy * (x - mean))), "train_formula_in_eval" (eval mode
    differentiates through batch statistics), or None (correct, for control).
    """

    def __init__(self, inner, bug):
        self.__dict__.update(inner=inner, bug=bug, grads=(None, None), x=None)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    @property
    def grad_gamma(self):
        return self.grads[0]

    @property
    def grad_beta(self):
        return self.grads[1]

    def forward(self, x):
        self.__dict__["x"] = x
        return self.inner.forward(x)

    __call__ = forward

    def backward(self, dy):
        m, x = self.inner, self.x
        batch = m.training or not m.track_running_stats
        if batch or self.bug == "train_formula_in_eval":
            mean, var = reference.batch_stats(x)
        else:
            mean, var = m.running_mean, m.running_var
        dx, dgamma, dbeta = reference.backward(dy, x, m.gamma, mean, var, m.eps,
                                               training=batch or self.bug == "train_formula_in_eval")
        if self.bug == "no_mean_term" and batch:
            g = m.gamma if m.gamma is not None else 1.0
            dx = dx + _pc(g / np.sqrt(var + m.eps) * dbeta / (x.size // x.shape[1]), x)
        if self.bug == "dgamma_without_invstd":
            dgamma = dgamma * np.sqrt(var + m.eps)
        self.__dict__["grads"] = (dgamma, dbeta) if m.affine else (None, None)
        return dx


def run_user_test(check, strategy):
    """Run ``check`` as a Hypothesis property test over ``strategy``."""
    @USER_TEST
    @given(strategy)
    def user_test(p):
        check(p)

    user_test()


def check_forward(bug):
    def check(p):
        expected = p.bnorm_module()(p.x)
        actual, _, _ = numpy_batch_norm(p.x, p.weight, p.bias, p.eps, bug=bug)
        assert_batch_norm_close(actual, expected, p.dtype, p.reduction_size,
                                x=p.x, weight=p.weight, eps=p.eps)
    return check


def check_running_stats(bug):
    def check(p):
        bn = p.bnorm_module()
        bn(p.x)
        _, mean, var = numpy_batch_norm(p.x, p.weight, p.bias, p.eps)
        new_mean, new_var = numpy_update_running(p.state["running_mean"], p.state["running_var"],
                                                 mean, var, p.reduction_size, _momentum_used(p), bug=bug)
        assert_batch_norm_close(new_mean, bn.running_mean, p.dtype, p.reduction_size,
                                what="running_mean", x=p.x)
        assert_batch_norm_close(new_var, bn.running_var, p.dtype, p.reduction_size,
                                what="running_var", x=p.x)
    return check


def check_gradcheck(bug):
    def check(p):
        gradcheck(WrongBackward(p.bnorm_module(), bug), p.x)
    return check


# ----------------------------------------------------------------------------
# the strategies generate valid problems
# ----------------------------------------------------------------------------

@FAST
@given(st.data())
def test_batch_norm_shapes_respect_their_bounds(data):
    dims = data.draw(st.sampled_from(ALL_DIMS))
    min_side = data.draw(st.integers(0, 2))
    max_side = data.draw(st.integers(max(min_side, 2), 10))
    min_reduction = data.draw(st.sampled_from([0, 2]))
    max_elements = data.draw(st.integers(max(64, 2 * min_side ** (dims + 2)), 4096))
    shape = data.draw(bst.batch_norm_shapes(dims, min_side, max_side, max_elements,
                                            min_reduction_size=min_reduction))
    assert isinstance(shape, tuple) and len(shape) == dims + 2
    assert all(isinstance(s, int) for s in shape)
    N, C, *spatial = shape
    assert 1 <= C <= max_side and C >= min_side
    assert all(min_side <= s <= max_side for s in [N, *spatial])
    assert np.prod(shape) <= max_elements
    if min_reduction:
        assert N * int(np.prod(spatial)) >= min_reduction


@FAST
@given(bst.module_options())
def test_module_options_are_accepted_by_bnorm_and_the_reference(options):
    assert set(options) == {"eps", "momentum", "affine", "track_running_stats"}
    assert np.isfinite(options["eps"]) and options["eps"] > 0
    assert options["momentum"] is None or 0.0 <= options["momentum"] <= 1.0
    bn = bnorm.BatchNorm2d(3, **options)
    assert bn.eps == options["eps"] and bn.momentum == options["momentum"]
    assert bn.affine == options["affine"] and bn.track_running_stats == options["track_running_stats"]
    reference.ReferenceBatchNorm(3, **options)


@FAST
@given(st.data())
def test_batch_norm_inputs_are_finite_arrays_of_the_requested_shape_and_dtype(data):
    shape = data.draw(bst.batch_norm_shapes(data.draw(st.sampled_from(ALL_DIMS)), min_side=0))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    x = data.draw(bst.batch_norm_inputs(shape, dtype))
    assert isinstance(x, np.ndarray) and x.shape == shape and x.dtype == dtype
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()        # never NaN or inf unless asked


def test_batch_norm_inputs_give_nan_and_inf_only_when_asked():
    shape = (4, 3, 5)
    x = find(bst.batch_norm_inputs(shape, np.float32, allow_nan=True), lambda x: np.isnan(x).any(),
             settings=FIND)
    assert x.shape == shape and x.dtype == np.float32
    x = find(bst.batch_norm_inputs(shape, np.float64, allow_infinity=True),
             lambda x: np.isinf(x).any(), settings=FIND)
    assert not np.isnan(x).any()


def _channels(x):
    return np.moveaxis(x.astype(np.float64), 1, 0).reshape(x.shape[1], -1)


def test_batch_norm_inputs_include_the_hard_cases():
    """Large offsets in float32, constant channels, and mixed scales are all generated."""
    inputs = bst.batch_norm_inputs((8, 4, 3, 3), np.float32)

    def large_offset(x):      # like 1e4 + N(0, 1): mean over a thousand standard deviations
        c = _channels(x)
        return bool(((np.abs(c.mean(1)) > 1e3 * c.std(1)) & (c.std(1) > 0)).any())

    def constant_and_varying(x):
        ptp = np.ptp(_channels(x), axis=1)
        return bool((ptp == 0).any() and (ptp > 0).any())

    def mixed_scales(x):      # spreads of channels differ by a factor 1e5 or more
        std = _channels(x).std(1)
        std = std[std > 0]
        return std.size >= 2 and std.max() > 1e5 * std.min()

    def outliers(x):          # heavy tails inside a channel
        c = _channels(x)
        dev = np.abs(c - np.median(c, axis=1, keepdims=True))
        mad = np.median(dev, axis=1)
        return bool(((mad > 0) & (dev.max(axis=1) > 100 * mad)).any())

    for condition in (large_offset, constant_and_varying, mixed_scales, outliers):
        x = find(inputs, condition, settings=FIND)
        assert condition(x)


@FAST
@given(bst.problems(dims=ALL_DIMS, training=None))
def test_problems_are_valid_and_run_on_bnorm(p):
    assert p.dtype in (np.float32, np.float64) and p.x.dtype == p.dtype
    assert p.x.ndim in (2, 3, 4, 5) and p.x.flags.c_contiguous and np.isfinite(p.x).all()
    assert p.module_class_name == {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d",
                                   5: "BatchNorm3d"}[p.x.ndim]
    assert isinstance(p.training, bool)
    C, M = p.num_features, p.reduction_size
    assert C >= 1 and M == p.x.size // C
    if p.uses_batch_stats:
        assert M >= 2                 # torch raises for one value per channel
    expected_keys = set()
    if p.options["affine"]:
        expected_keys |= {"weight", "bias"}
    if p.options["track_running_stats"]:
        expected_keys |= {"running_mean", "running_var", "num_batches_tracked"}
    assert set(p.state) == expected_keys
    for key, value in p.state.items():
        if key == "num_batches_tracked":
            assert value.dtype == np.int64 and value.shape == () and int(value) >= 0
        else:
            assert value.dtype == p.dtype and value.shape == (C,) and np.isfinite(value).all()
    if "running_var" in p.state:
        assert (p.state["running_var"] >= 0).all()
    assert p.dy.shape == p.x.shape and p.dy.dtype == p.dtype and np.isfinite(p.dy).all()

    bn = p.bnorm_module()             # the problem is one bnorm accepts...
    assert type(bn).__name__ == p.module_class_name and bn.training == p.training
    sd = bn.state_dict()
    assert set(sd) == expected_keys
    for key in expected_keys:
        np.testing.assert_array_equal(sd[key], p.state[key])
    y = bn(p.x)
    dx = bn.backward(p.dy)
    assert y.shape == dx.shape == p.x.shape
    assert np.isfinite(y).all() and np.isfinite(dx).all()   # ...and that stays finite


@settings(max_examples=30, deadline=None)
@given(bst.problems(dims=3, dtypes=(np.float64,), training=True),
       bst.problems(dims=0, dtypes=(np.float32,), training=False))
def test_problems_follow_dims_dtypes_and_mode(p_train, p_eval):
    assert p_train.x.ndim == 5 and p_train.dtype == np.float64 and p_train.training
    assert p_train.reduction_size >= 2
    assert p_eval.x.ndim == 2 and p_eval.dtype == np.float32 and not p_eval.training


def test_import_without_hypothesis(run_python):
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"      # makes `import hypothesis` fail
        "import bnorm.testing as t\n"
        "import numpy as np\n"
        "y = t.reference.forward(np.arange(6.0).reshape(3, 2))\n"
        "t.assert_batch_norm_close(y, y, np.float64)\n"
        "try:\n"
        "    t.strategies\n"
        "except ImportError as e:\n"
        "    assert 'hypothesis' in str(e), e\n"
        "    print('clear ImportError')\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clear ImportError"


# ----------------------------------------------------------------------------
# assert_batch_norm_close: behaviour and messages
# ----------------------------------------------------------------------------

def _example(dtype=np.float32, shape=(4, 3, 5, 2), seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    return x, reference.forward(x)


def test_exact_and_rounded_results_pass():
    x, y = _example()
    assert_batch_norm_close(y.astype(np.float32), y, np.float32)
    # a couple of ulps off everywhere is still fine
    y32 = y.astype(np.float32)
    assert_batch_norm_close(np.nextafter(np.nextafter(y32, np.inf), np.inf), y, np.float32)
    x64, y64 = _example(np.float64)
    assert_batch_norm_close(y64.copy(), y64, np.float64)


def test_failure_message_names_worst_index_values_and_tolerance():
    x, y = _example()
    actual = y.astype(np.float32)
    actual[0, 0, 0, 0] += 1e-4          # fails, but less badly
    actual[1, 2, 3, 1] += 0.5           # the worst
    with pytest.raises(AssertionError) as info:
        assert_batch_norm_close(actual, y, np.float32, what="output")
    msg = str(info.value)
    assert "output is not close" in msg
    assert "2 of 120 elements" in msg
    assert "worst at index (1, 2, 3, 1) (channel 2)" in msg
    assert f"actual {float(actual[1, 2, 3, 1])!r}" in msg
    assert f"expected {float(y[1, 2, 3, 1])!r}" in msg
    tol, _ = batch_norm_tolerance(y, np.float32)
    assert f"tolerance {tol[1, 2, 3, 1]:.6g}" in msg
    assert "M = 40" in msg and "float32" in msg


def test_nan_positions_must_match():
    x, y = _example(np.float64)
    y_nan = y.copy()
    y_nan[:, 1] = np.nan                 # a NaN channel
    assert_batch_norm_close(y_nan.copy(), y_nan, np.float64)     # same positions: fine
    with pytest.raises(AssertionError, match=r"NaN positions differ: 0 NaN in actual.*40 NaN in expected"):
        assert_batch_norm_close(y, y_nan, np.float64)
    with pytest.raises(AssertionError, match=r"NaN positions differ: 40 NaN in actual"):
        assert_batch_norm_close(y_nan, y, np.float64)


def test_infinities_must_match():
    e = np.array([1.0, np.inf, -np.inf])
    assert_batch_norm_close(e.copy(), e, np.float64, reduction_size=4, what="running_var")
    with pytest.raises(AssertionError, match="infinities differ"):
        assert_batch_norm_close(np.array([1.0, -np.inf, -np.inf]), e, np.float64, reduction_size=4,
                                what="running_var")


def test_shape_and_dtype_are_checked():
    x, y = _example()
    with pytest.raises(AssertionError, match="shape"):
        assert_batch_norm_close(y[:2].astype(np.float32), y, np.float32)
    with pytest.raises(AssertionError, match="dtype float64, expected float32"):
        assert_batch_norm_close(y, y, np.float32)
    assert_batch_norm_close(y, y, np.float32, check_dtype=False)
    with pytest.raises(ValueError, match="reduction_size"):
        assert_batch_norm_close(np.ones(3), np.ones(3), np.float64, what="running_mean")
    with pytest.raises(ValueError, match="what"):
        assert_batch_norm_close(y, y, np.float64, what="nonsense")


def test_tolerance_scales_with_epsilon_reduction_size_and_conditioning():
    y = np.ones((2, 3, 4))
    t32, _ = batch_norm_tolerance(y, np.float32, 8)
    t64, _ = batch_norm_tolerance(y, np.float64, 8)
    np.testing.assert_allclose(t32 / t64, np.finfo(np.float32).eps / np.finfo(np.float64).eps)
    t_big, _ = batch_norm_tolerance(y, np.float32, 800)
    assert (t_big > 5 * t32).all()       # 1 + sqrt(M): about 9.7 times more
    # with the input known, a channel with a large offset gets a wider tolerance
    x = np.zeros((2, 3, 4))
    x[:, 0] = 1e4 + np.arange(8).reshape(2, 4)
    x[:, 1] = np.arange(8).reshape(2, 4)
    t_x, info = batch_norm_tolerance(y, np.float32, x=x)
    assert info["kappa"][0] > 1e3 > 10 > info["kappa"][1]
    assert t_x[0, 0, 0] > 100 * t_x[0, 1, 0]


def test_conditioning_makes_float32_transforms_with_offsets_acceptable():
    """PyTorch-style y = x * a + b in float32 on 1e4 + N(0, 1) loses ~1e-3 absolute:
    inherent to rounding x, so it fails the default (well-conditioned) tolerance
    but passes once x is given; bnorm, which works in double, passes both."""
    rng = np.random.default_rng(1)
    x = (1e4 + rng.standard_normal((16, 3, 8, 8))).astype(np.float32)
    mean, var = reference.batch_stats(x)
    a = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    b = (-mean * a).astype(np.float32)
    y_fused = x * _pc(a, x) + _pc(b, x)
    expected = reference.forward(x)
    with pytest.raises(AssertionError, match="output is not close"):
        assert_batch_norm_close(y_fused, expected, np.float32)
    assert_batch_norm_close(y_fused, expected, np.float32, x=x)
    y_bnorm = bnorm.BatchNorm2d(3)(x)
    assert_batch_norm_close(y_bnorm, expected, np.float32)
    assert_batch_norm_close(y_bnorm, expected, np.float32, x=x)


# ----------------------------------------------------------------------------
# bnorm agrees with the reference on generated problems
# ----------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(bst.problems(dims=ALL_DIMS, training=None))
def test_bnorm_matches_reference_on_generated_problems(p):
    bn, ref = p.bnorm_module(), p.reference_module()
    M = p.reduction_size
    cond = dict(x=p.x, weight=p.weight, eps=p.eps)
    assert_batch_norm_close(bn(p.x), ref(p.x), p.dtype, M, what="output", **cond)
    if p.options["track_running_stats"]:
        assert bn.num_batches_tracked == ref.num_batches_tracked
        assert_batch_norm_close(bn.running_mean, ref.running_mean, p.dtype, M, what="running_mean", x=p.x)
        assert_batch_norm_close(bn.running_var, ref.running_var, p.dtype, M, what="running_var", x=p.x)
    assert_batch_norm_close(bn.backward(p.dy), ref.backward(p.dy), p.dtype, M, what="grad_input",
                            dy=p.dy, **cond)
    if p.options["affine"]:
        assert_batch_norm_close(bn.grad_gamma, ref.grad_gamma, p.dtype, M, what="grad_weight",
                                dy=p.dy, **cond)
        assert_batch_norm_close(bn.grad_beta, ref.grad_beta, p.dtype, M, what="grad_bias", dy=p.dy)


@settings(max_examples=150, deadline=None)
@given(bst.problems(dims=ALL_DIMS, training=None, max_offset=0, kinds=WELL_CONDITIONED))
def test_bnorm_output_meets_the_default_tolerance_on_well_conditioned_problems(p):
    """Without x, the tolerance assumes well-conditioned data; bnorm meets it there."""
    bn, ref = p.bnorm_module(), p.reference_module()
    assert_batch_norm_close(bn(p.x), ref(p.x), p.dtype)


@settings(max_examples=80, deadline=None)
@given(bst.problems(dims=ALL_DIMS, training=True, allow_nan=True))
def test_nan_stays_in_its_channel_in_bnorm_and_reference(p):
    bn, ref = p.bnorm_module(), p.reference_module()
    y, y_ref = bn(p.x), ref(p.x)
    nan_channels = np.isnan(_channels(p.x)).any(axis=1)
    assert np.isnan(_channels(y)[nan_channels]).all()
    assert not np.isnan(_channels(y)[~nan_channels]).any()
    cond = dict(x=p.x, weight=p.weight, eps=p.eps)
    assert_batch_norm_close(y, y_ref, p.dtype, what="output", **cond)
    if p.options["track_running_stats"]:
        assert_batch_norm_close(bn.running_mean, ref.running_mean, p.dtype, what="running_mean", x=p.x)
    assert_batch_norm_close(bn.backward(p.dy), ref.backward(p.dy), p.dtype, what="grad_input",
                            dy=p.dy, **cond)


# ----------------------------------------------------------------------------
# wrong implementations are caught
# ----------------------------------------------------------------------------

def test_a_correct_numpy_implementation_passes():
    run_user_test(check_forward(None), bst.problems(dims=ALL_DIMS, training=True))
    run_user_test(check_running_stats(None),
                  bst.problems(dims=ALL_DIMS, options=bst.module_options(track_running_stats=True)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bug", ["unbiased_var", "eps_outside_sqrt"])
def test_wrong_forward_is_caught_by_a_property_test(bug, dtype):
    with pytest.raises(AssertionError, match="output is not close"):
        run_user_test(check_forward(bug), bst.problems(dims=ALL_DIMS, dtypes=(dtype,)))


def test_naive_variance_in_float32_is_caught_by_a_property_test():
    with pytest.raises(AssertionError, match="output is not close"):
        run_user_test(check_forward("naive_var"), bst.problems(dims=ALL_DIMS, dtypes=(np.float32,)))


def test_keras_momentum_is_caught_by_a_property_test():
    with pytest.raises(AssertionError, match="running_(mean|var) is not close"):
        run_user_test(check_running_stats("keras_momentum"),
                      bst.problems(dims=ALL_DIMS, options=bst.module_options(track_running_stats=True)))


def test_wrong_forwards_fail_on_concrete_inputs():
    rng = np.random.default_rng(2)
    # E[x^2] - E[x]^2 in float32 on 1e4 + N(0, 1): the variance is lost to cancellation
    x = (1e4 + rng.standard_normal((8, 3, 4, 4))).astype(np.float32)
    expected = bnorm.BatchNorm2d(3)(x)
    good, _, _ = numpy_batch_norm(x)
    assert_batch_norm_close(good, expected, np.float32, x=x)
    bad, _, _ = numpy_batch_norm(x, bug="naive_var")
    with pytest.raises(AssertionError, match="output is not close"):
        assert_batch_norm_close(bad, expected, np.float32, x=x)
    # eps outside the square root matters when var is comparable with eps
    x = (1e-3 * rng.standard_normal((8, 3, 4, 4))).astype(np.float32)
    expected = bnorm.BatchNorm2d(3)(x)
    bad, _, _ = numpy_batch_norm(x, bug="eps_outside_sqrt")
    with pytest.raises(AssertionError, match="output is not close"):
        assert_batch_norm_close(bad, expected, np.float32, x=x)
    # unbiased variance: a relative error of 1 / (2M)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    expected = bnorm.BatchNorm2d(3)(x)
    bad, _, _ = numpy_batch_norm(x, bug="unbiased_var")
    with pytest.raises(AssertionError, match="output is not close"):
        assert_batch_norm_close(bad, expected, np.float32, x=x)
    # Keras momentum: 0.1 on the old value instead of the new batch
    bn = bnorm.BatchNorm2d(3)
    bn(x)
    _, mean, var = numpy_batch_norm(x)
    rm, rv = numpy_update_running(np.zeros(3, np.float32), np.ones(3, np.float32), mean, var, 16, 0.1,
                                  bug="keras_momentum")
    with pytest.raises(AssertionError, match="running_mean is not close"):
        assert_batch_norm_close(rm, bn.running_mean, np.float32, 16, what="running_mean", x=x)
    with pytest.raises(AssertionError, match="running_var is not close"):
        assert_batch_norm_close(rv, bn.running_var, np.float32, 16, what="running_var", x=x)


# ----------------------------------------------------------------------------
# gradcheck
# ----------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(bst.problems(dims=ALL_DIMS, dtypes=(np.float64,), training=None))
def test_gradcheck_passes_for_bnorm_and_leaves_its_state_alone(p):
    bn = p.bnorm_module()
    before = bn.state_dict()
    assert gradcheck(bn, p.x) is True
    after = bn.state_dict()
    assert set(after) == set(before)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])   # exactly, incl. num_batches_tracked
    assert bn.training == p.training
    assert gradcheck(bn, p.x, dy=p.dy.astype(np.float64), seed=1)


@settings(max_examples=40, deadline=None)
@given(bst.problems(dims=ALL_DIMS, dtypes=(np.float64,), training=None))
def test_gradcheck_passes_for_the_reference_and_restores_its_attributes(p):
    ref = p.reference_module()           # no state_dict: restored attribute by attribute
    saved = {k: (None if getattr(ref, k) is None else np.copy(getattr(ref, k)))
             for k in ("running_mean", "running_var", "gamma", "beta")}
    nbt = ref.num_batches_tracked
    assert gradcheck(ref, p.x)
    for k, v in saved.items():
        if v is None:
            assert getattr(ref, k) is None
        else:
            np.testing.assert_array_equal(getattr(ref, k), v)
    assert ref.num_batches_tracked == nbt


def test_gradcheck_passes_for_a_correct_wrapper():
    """The wrong-backward wrapper without a bug is accepted: failures below are the bugs."""
    run_user_test(check_gradcheck(None), bst.problems(dims=ALL_DIMS, dtypes=(np.float64,), training=None))


def test_gradcheck_catches_a_missing_mean_term_in_a_property_test():
    with pytest.raises(AssertionError, match=r"grad_input \(dx\) disagrees"):
        run_user_test(check_gradcheck("no_mean_term"),
                      bst.problems(dims=ALL_DIMS, dtypes=(np.float64,), training=True))


def test_gradcheck_catches_wrong_parameter_and_eval_gradients_in_property_tests():
    with pytest.raises(AssertionError, match=r"grad_gamma \(dgamma\) disagrees"):
        run_user_test(check_gradcheck("dgamma_without_invstd"),
                      bst.problems(dims=ALL_DIMS, dtypes=(np.float64,), training=None,
                                   options=bst.module_options(affine=True)))
    with pytest.raises(AssertionError, match=r"eval mode.*grad_input \(dx\) disagrees"):
        run_user_test(check_gradcheck("train_formula_in_eval"),
                      bst.problems(dims=ALL_DIMS, dtypes=(np.float64,), training=False,
                                   options=bst.module_options(track_running_stats=True)))


def test_gradcheck_catches_a_missing_mean_term_on_a_concrete_input():
    x = np.random.default_rng(3).standard_normal((8, 4, 3, 3))
    bn = bnorm.BatchNorm2d(4, dtype=np.float64)
    assert gradcheck(bn, x)
    with pytest.raises(AssertionError) as info:
        gradcheck(WrongBackward(bnorm.BatchNorm2d(4, dtype=np.float64), "no_mean_term"), x)
    msg = str(info.value)
    assert "training mode" in msg and "grad_input (dx)" in msg and "worst channel" in msg
    assert "analytic" in msg and "numeric" in msg and "tolerance" in msg


def test_gradcheck_works_with_large_offsets_and_constant_channels():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 5))
    x[:, 0] += 1e6                         # large offset
    x[:, 1] = 0.25                         # constant channel
    for training in (True, False):
        bn = bnorm.BatchNorm1d(3, dtype=np.float64).train(training)
        bn.running_mean[...] = [1e6, 0.0, 0.5]
        assert gradcheck(bn, x)
        with pytest.raises(AssertionError):
            gradcheck(WrongBackward(bnorm.BatchNorm1d(3, dtype=np.float64).train(training),
                                    "no_mean_term" if training else "train_formula_in_eval"), x)


def test_gradcheck_needs_float64():
    x = np.random.default_rng(5).standard_normal((4, 2, 3))
    with pytest.raises(TypeError, match="float64 module, got a float32 module"):
        gradcheck(bnorm.BatchNorm1d(2), x)
    with pytest.raises(TypeError, match="float64 input, got float32"):
        gradcheck(bnorm.BatchNorm1d(2, dtype=np.float64), x.astype(np.float32))
