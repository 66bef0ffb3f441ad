"""Properties of bnorm.BatchNorm1d/2d/3d and bnorm.functional against the float64 reference.

Each step (forward, backward) is compared with a ReferenceBatchNorm started
from the module's own state, within bnorm.testing's error model (conftest.py's
Step), which is derived from the dtype's epsilon and the reduction length M and,
for bnorm, does *not* grow with the offset of x: an input 1e4 + N(0, 1) in
float32 must come out as accurately as N(0, 1) does: bnorm computes the
statistics in float64.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import bnorm
import bnorm.functional as F
from bnorm.testing import assert_batch_norm_close, reference
from bnorm.testing.strategies import Problem

CLASSES = {2: bnorm.BatchNorm1d, 3: bnorm.BatchNorm1d, 4: bnorm.BatchNorm2d, 5: bnorm.BatchNorm3d}
DTYPES = [np.float32, np.float64]


DEFAULT_OPTIONS = {"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True}


@dataclasses.dataclass
class Scenario:
    """One module driven through train_steps training steps, then eval_steps eval
    steps; each step is a bnorm.testing Problem (see make_step)."""
    shape: tuple
    dtype: type
    options: dict
    train_steps: int = 2
    eval_steps: int = 1
    offset: float = 0.0
    scale: float = 1.0
    initial_batches: int = 0
    assign_parameters: bool = False  # bn.gamma = g (copy in) rather than bn.gamma[...] = g
    seed: int = 0


def make_module(scenario):
    return CLASSES[len(scenario.shape)](scenario.shape[1], dtype=scenario.dtype, **scenario.options)


def make_step(rng, scenario, training=True):
    """One step: x = offset + scale * (per-channel shift + N(0, 1)) in the scenario's
    dtype, and a dy."""
    shape = scenario.shape
    shift = rng.normal(size=shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2))
    x = scenario.offset + scenario.scale * (shift + rng.standard_normal(shape))
    dy = rng.standard_normal(shape)
    return Problem(x=x.astype(scenario.dtype), dtype=np.dtype(scenario.dtype),
                   options={**DEFAULT_OPTIONS, **scenario.options}, training=training,
                   dy=dy.astype(scenario.dtype))


def set_random_parameters(bn, rng, assign):
    """Random gamma (either sign) and beta, by assignment or in place."""
    C = bn.num_features
    gamma = rng.uniform(-2.0, 2.0, C).astype(bn.dtype)
    beta = rng.normal(size=C).astype(bn.dtype)
    if assign:
        bn.gamma, bn.beta = gamma, beta
    else:
        bn.gamma[...] = gamma
        bn.beta[...] = beta
    np.testing.assert_array_equal(bn.gamma, gamma)
    np.testing.assert_array_equal(bn.beta, beta)


def run_scenario(checks, scenario):
    """Several training steps, then eval steps, each compared with the reference."""
    rng = np.random.default_rng(scenario.seed)
    bn = make_module(scenario)
    if bn.affine:
        set_random_parameters(bn, rng, scenario.assign_parameters)
    if bn.track_running_stats:
        bn.num_batches_tracked = scenario.initial_batches
    for training in [True] * scenario.train_steps + [False] * scenario.eval_steps:
        step = make_step(rng, scenario, training)
        bn.train(step.training)
        checks.check_step(bn, step.x, step.dy)


@st.composite
def module_options(draw):
    return {
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5]) | st.floats(1e-8, 1.0)),
        "momentum": draw(st.sampled_from([0.1, None, 0.0, 1.0]) | st.floats(0.0, 1.0)),
        "affine": draw(st.booleans()),
        "track_running_stats": draw(st.booleans()),
    }


@st.composite
def scenarios(draw):
    ndim = draw(st.sampled_from(sorted(CLASSES)))
    shape = (draw(st.integers(1, 5)), draw(st.integers(1, 5)),
             *draw(st.lists(st.integers(1, 7), min_size=ndim - 2, max_size=ndim - 2)))
    return Scenario(
        shape=shape,
        dtype=draw(st.sampled_from(DTYPES)),
        options=draw(module_options()),
        train_steps=draw(st.integers(1, 3)),
        eval_steps=draw(st.integers(0, 2)),
        offset=draw(st.sampled_from([0.0, 1.0, -50.0, 1e4])),
        scale=draw(st.sampled_from([1.0, 1e-2, 1e2])),
        initial_batches=draw(st.integers(0, 10)),
        assign_parameters=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def _edge(shape, dtype=np.float32, train_steps=2, eval_steps=1, **options):
    return Scenario(shape=shape, dtype=dtype, options=options, train_steps=train_steps,
                    eval_steps=eval_steps)


@given(scenarios())
@example(_edge((1, 3, 1, 1), train_steps=0, eval_steps=2))      # N=1, H=W=1 in eval
@example(_edge((1, 3, 1, 1), train_steps=1, eval_steps=0))      # ... is an error in training
@example(_edge((1, 3, 1, 1), track_running_stats=False, train_steps=0))  # and without running stats
@example(_edge((2, 1, 1, 1), np.float64))                       # C=1, M=2
@example(_edge((3, 5, 7, 9)))                                   # odd sizes
@example(_edge((1, 4, 1), momentum=None, train_steps=1))        # 1d, one value: error
@example(_edge((9, 2), np.float64, momentum=None, train_steps=3))
@example(_edge((2, 3, 3, 1, 5), affine=False))
def test_module_matches_reference(checks, scenario):
    run_scenario(checks, scenario)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (4, 3, 0, 5), (0, 3), (2, 3, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_input(checks, shape, dtype):
    """No values per channel: empty output, the batch counts, running stats stay (like torch)."""
    run_scenario(checks, _edge(shape, dtype, train_steps=2, eval_steps=1))


# ----------------------------------------------------------------------------
# numerics
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, offset", [(np.float32, 1e4), (np.float32, -3e4), (np.float64, 1e8)])
def test_large_offset_keeps_precision(checks, dtype, offset):
    """offset + N(0, 1): running statistics and y as accurate as without the offset.

    With momentum=1 the running mean is the batch mean, rounded once to the dtype
    (float64 statistics: within 2 eps relative, not the toolkit's sqrt(M) growth of
    a mean's error), and the running variance the unbiased batch variance, within
    the toolkit's tolerance of the centred problem (about 8 * eps * sqrt(M)
    relative, 4e-5 for float32 here); the full step (y, dx, gradients) is then
    checked by check_step, whose bounds do not grow with the offset.
    """
    scenario = Scenario(shape=(8, 4, 16, 16), dtype=dtype, options={"momentum": 1.0},
                       offset=offset, train_steps=3, eval_steps=2, seed=7)
    rng = np.random.default_rng(scenario.seed)
    bn = make_module(scenario)
    x = make_step(rng, scenario).x
    bn(x)
    M = x.size // x.shape[1]
    mean, var = reference.batch_stats(x)
    assert_batch_norm_close(bn.running_mean, mean, dtype, M, what="running_mean",
                            rtol=2 * np.finfo(dtype).eps, atol=0)
    checks.Step(x, dtype, bn.eps, mean, batch=True).assert_close(bn.running_var, var * M / (M - 1),
                                                                 "running_var")
    run_scenario(checks, scenario)


@given(dtype=st.sampled_from(DTYPES), ndim=st.sampled_from(sorted(CLASSES)),
       value=st.sampled_from([0.0, 0.1, -7.3, 1e4 + 0.1, 3e-30]) | st.floats(-1e6, 1e6),
       track_running_stats=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_constant_channel_gives_exactly_beta(checks, dtype, ndim, value, track_running_stats, seed):
    rng = np.random.default_rng(seed)
    scenario = Scenario(shape=(3, 4) + (5,) * (ndim - 2), dtype=dtype,
                       options={"track_running_stats": track_running_stats})
    bn = make_module(scenario)
    set_random_parameters(bn, rng, assign=False)
    step = make_step(rng, scenario)
    x, dy = step.x, step.dy
    x[:, 2] = value
    y = bn(x)
    np.testing.assert_array_equal(y[:, 2], np.broadcast_to(bn.beta[2], y[:, 2].shape))
    checks.check_step(bn, x, dy)  # the other channels, dx and the statistics
    if not track_running_stats:  # eval without running stats still normalises with the batch
        bn.eval()
        np.testing.assert_array_equal(bn(x)[:, 2], np.broadcast_to(bn.beta[2], y[:, 2].shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
def test_non_finite_value_stays_in_its_channel(checks, rng, bad, dtype, training):
    scenario = Scenario(shape=(4, 5, 6, 7), dtype=dtype, options={})
    bn = make_module(scenario).train(training)
    set_random_parameters(bn, rng, assign=True)
    step = make_step(rng, scenario)
    x, dy = step.x, step.dy
    x[2, 3, 1, 4] = bad
    checks.check_step(bn, x, dy)  # NaN exactly where the reference has NaN, else within bounds
    others = [0, 1, 2, 4]
    y = bn(x)
    assert np.isfinite(y[:, others]).all() and np.isfinite(bn.backward(dy)[:, others]).all()
    if training:
        assert np.isfinite(bn.running_mean[others]).all() and np.isfinite(bn.running_var[others]).all()


# ----------------------------------------------------------------------------
# state and options
# ----------------------------------------------------------------------------

def test_parameter_assignment_copies(rng):
    bn = bnorm.BatchNorm2d(3)
    gamma = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    bn.gamma = gamma
    gamma[:] = 0.0  # the module holds a copy
    assert (bn.gamma != 0).all()
    x = make_step(rng, Scenario(shape=(2, 3, 4, 4), dtype=np.float32, options={})).x
    y_before = bn(x)
    bn.gamma[...] *= 2.0  # an in-place change is seen by the next forward; with beta = 0
    np.testing.assert_array_equal(bn(x), 2.0 * y_before)  # scaling by 2 is exact in floating point


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_arguments_give_the_same_result(rng, dtype):
    scenario = Scenario(shape=(3, 4, 5, 6), dtype=dtype, options={})
    a, b = make_module(scenario), make_module(scenario)
    step = make_step(rng, scenario)
    x, dy = step.x, step.dy
    out_y, out_dx = np.empty_like(x), np.empty_like(x)
    y = a(x)
    assert b.forward(x, out=out_y) is out_y
    np.testing.assert_array_equal(out_y, y)
    dx = a.backward(dy)
    assert b.backward(dy, out=out_dx) is out_dx
    np.testing.assert_array_equal(out_dx, dx)
    np.testing.assert_array_equal(a.running_var, b.running_var)
    np.testing.assert_array_equal(a.grad_gamma, b.grad_gamma)


def test_train_eval_and_attributes():
    bn = bnorm.BatchNorm3d(5, eps=1e-3, momentum=None, affine=False, dtype="float64")
    assert bn.train(False) is bn and bn.training is False
    assert bn.eval() is bn and bn.train() is bn and bn.training is True
    bn.training = False
    assert not bn.training
    assert (bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (5, 1e-3, None, False, True)
    assert bn.dtype == np.dtype(np.float64) and isinstance(bn.dtype, np.dtype)
    assert bn.gamma is None and bn.beta is None and bn.grad_gamma is None and bn.grad_beta is None
    assert bn.num_batches_tracked == 0 and isinstance(bn.num_batches_tracked, int)
    np.testing.assert_array_equal(bn.running_mean, np.zeros(5))
    np.testing.assert_array_equal(bn.running_var, np.ones(5))
    assert bn.running_mean.dtype == np.float64
    bare = bnorm.BatchNorm2d(2, track_running_stats=False)
    assert bare.running_mean is None and bare.running_var is None
    assert bare.gamma.dtype == np.float32 and bare.grad_gamma is None


# ----------------------------------------------------------------------------
# bnorm.functional
# ----------------------------------------------------------------------------

@given(scenario=scenarios(), with_running=st.booleans(), with_weight=st.booleans(),
       with_bias=st.booleans(), training=st.booleans())
def test_functional_matches_reference(checks, scenario, with_running, with_weight, with_bias,
                                      training):
    rng = np.random.default_rng(scenario.seed)
    step = make_step(rng, scenario)
    x, dy = step.x, step.dy
    C, dtype = scenario.shape[1], scenario.dtype
    eps = step.eps
    momentum = step.momentum if step.momentum is not None else 0.1
    weight = rng.uniform(-2, 2, C).astype(dtype) if with_weight else None
    bias = rng.normal(size=C).astype(dtype) if with_bias else None
    rm = rng.normal(size=C).astype(dtype) if with_running else None
    rv = rng.uniform(0.5, 2.0, C).astype(dtype) if with_running else None
    rm_before = None if rm is None else rm.copy()
    rv_before = None if rv is None else rv.copy()
    batch = training or not with_running
    M = x.size // C

    if not training and not with_running:  # as torch: eval mode needs the running statistics
        with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
            F.batch_norm(x, rm, rv, weight, bias, training=training, momentum=momentum, eps=eps)
        return

    if batch and M == 1:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            F.batch_norm(x, rm, rv, weight, bias, training=training, momentum=momentum, eps=eps)
        return
    y, save_mean, save_invstd = F.batch_norm(x, rm, rv, weight, bias, training=training,
                                             momentum=momentum, eps=eps)
    mean, var = reference.batch_stats(x) if batch else (rm_before, rv_before)
    updates = training and with_running
    model = checks.Step(x, dtype, eps, mean, batch, weight=weight, dy=dy)

    assert y.dtype == dtype and y.shape == x.shape
    model.assert_close(y, reference.forward(x, weight, bias, mean, var, eps), "y")
    for name, value in (("save_mean", save_mean), ("save_invstd", save_invstd)):
        assert value.dtype == np.float64 and value.shape == (C,), name
    invstd = 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)
    if batch:
        model.assert_close(save_mean, mean, "save_mean")
    else:  # the running mean itself, unchanged
        np.testing.assert_array_equal(save_mean, mean)
    model.assert_close(save_invstd, invstd, "save_invstd")
    if updates:
        new_mean, new_var = reference.update_running(rm_before, rv_before, mean, var, M, momentum)
        model.assert_close(rm, new_mean, "running_mean")
        model.assert_close(rv, new_var, "running_var")
    elif with_running:
        np.testing.assert_array_equal(rm, rm_before)
        np.testing.assert_array_equal(rv, rv_before)

    # backward from the statistics batch_norm returned; expected values from x alone
    dx, dweight, dbias = F.batch_norm_backward(dy, x, save_mean, save_invstd, weight, training=batch)
    ref_dx, ref_dweight, ref_dbias = reference.backward(dy, x, weight, mean, var, eps, training=batch)
    for name, value in (("dx", dx), ("dgamma", dweight), ("dbeta", dbias)):
        assert value.dtype == dtype, name
    model.assert_close(dx, ref_dx, "dx")
    model.assert_close(dweight, ref_dweight, "dgamma", "dweight")
    model.assert_close(dbias, ref_dbias, "dbeta", "dbias")


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_out_is_used(rng, dtype):
    scenario = Scenario(shape=(4, 3, 5), dtype=dtype, options={})
    step = make_step(rng, scenario)
    x, dy = step.x, step.dy
    out = np.empty_like(x)
    y, mean, invstd = F.batch_norm(x, training=True)
    y_out, _, _ = F.batch_norm(x, training=True, out=out)
    assert y_out is out
    np.testing.assert_array_equal(out, y)
    dx, _, _ = F.batch_norm_backward(dy, x, mean, invstd)
    dx_out, _, _ = F.batch_norm_backward(dy, x, mean, invstd, out=out)
    assert dx_out is out
    np.testing.assert_array_equal(out, dx)
