"""pickle, copy.copy and copy.deepcopy of the modules.

A copy has the original's class, constructor options, mode, num_batches_tracked and
the values of gamma, beta, running_mean and running_var, in arrays of its own (no
memory shared with the original, so changing one never changes the other). It starts
without a pending backward: the last forward's input and grad_gamma / grad_beta are
not copied.
"""

import copy
import pickle

import numpy as np
import pytest

import bnorm

CLASSES = {1: bnorm.BatchNorm1d, 2: bnorm.BatchNorm2d, 3: bnorm.BatchNorm3d}
COPIERS = {
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "pickle-protocol-0": lambda m: pickle.loads(pickle.dumps(m, protocol=0)),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}
ARRAYS = ("gamma", "beta", "running_mean", "running_var")
OPTIONS = [
    dict(),
    dict(eps=1e-3, momentum=None, dtype=np.float64),
    dict(momentum=0.0, affine=False),
    dict(momentum=1.0, track_running_stats=False, dtype="float64"),
    dict(affine=False, track_running_stats=False),
    dict(activation="relu", momentum=0.5),
    dict(dtype=np.float16, activation="relu"),
]


def input_for(dims, channels, rng, dtype, batch=4):
    shape = (batch, channels) + (3,) * dims
    return (2.0 + 3.0 * rng.standard_normal(shape)).astype(dtype)


def trained_module(cls, dims, rng, **options):
    bn = cls(5, **options)
    if bn.affine:
        bn.gamma[...] = rng.uniform(0.5, 2.0, 5)
        bn.beta[...] = rng.uniform(-1.0, 1.0, 5)
    for _ in range(3):
        bn(input_for(dims, 5, rng, bn.dtype))
    bn.backward(np.ones_like(input_for(dims, 5, rng, bn.dtype)))
    return bn


def assert_same_module(a, b):
    assert type(a) is type(b)
    assert repr(a) == repr(b)
    for attr in ("num_features", "eps", "momentum", "affine", "track_running_stats", "dtype", "activation",
                 "training", "num_batches_tracked"):
        assert getattr(a, attr) == getattr(b, attr), attr
    for attr in ARRAYS:
        va, vb = getattr(a, attr), getattr(b, attr)
        if va is None:
            assert vb is None, attr
            continue
        assert vb.dtype == va.dtype and vb.shape == va.shape, attr
        np.testing.assert_array_equal(vb, va, err_msg=attr)
        assert not np.shares_memory(va, vb), f"{attr} shares memory with the original"


@pytest.mark.parametrize("how", COPIERS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_round_trip_keeps_options_mode_and_buffers(how, options, dims, training, rng):
    bn = trained_module(CLASSES[dims], dims, rng, **options)
    bn.train(training)
    clone = COPIERS[how](bn)
    assert clone is not bn
    assert_same_module(bn, clone)


@pytest.mark.parametrize("how", COPIERS)
def test_copy_behaves_like_the_original(how, rng):
    """Both produce the same bits for the same next steps, in training and in eval."""
    bn = trained_module(bnorm.BatchNorm2d, 2, rng)
    clone = COPIERS[how](bn)
    for training in (True, False, True):
        bn.train(training)
        clone.train(training)
        x = input_for(2, 5, rng, np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(clone(x), bn(x))
        np.testing.assert_array_equal(clone.backward(dy), bn.backward(dy))
        np.testing.assert_array_equal(clone.grad_gamma, bn.grad_gamma)
        np.testing.assert_array_equal(clone.running_mean, bn.running_mean)
        np.testing.assert_array_equal(clone.running_var, bn.running_var)
        assert clone.num_batches_tracked == bn.num_batches_tracked


@pytest.mark.parametrize("how", COPIERS)
def test_copy_is_independent(how, rng):
    """Changing the copy (in place, by assignment, by training) leaves the original alone, and back."""
    bn = trained_module(bnorm.BatchNorm2d, 2, rng)
    before = {attr: getattr(bn, attr).copy() for attr in ARRAYS}
    clone = COPIERS[how](bn)
    clone.gamma[...] = 7.0
    clone.beta = np.full(5, -3.0, np.float32)
    clone(input_for(2, 5, rng, np.float32) + 100.0)  # moves the clone's running stats
    clone.eval()
    clone.num_batches_tracked = 1000
    for attr in ARRAYS:
        np.testing.assert_array_equal(getattr(bn, attr), before[attr], err_msg=attr)
    assert bn.training and bn.num_batches_tracked == 3
    bn.running_var[...] = 42.0
    assert not np.any(clone.running_var == 42.0)


@pytest.mark.parametrize("how", COPIERS)
def test_copy_starts_without_pending_backward(how, rng):
    bn = trained_module(bnorm.BatchNorm2d, 2, rng)
    assert bn.grad_gamma is not None
    clone = COPIERS[how](bn)
    assert clone.grad_gamma is None and clone.grad_beta is None
    with pytest.raises(RuntimeError, match="before forward"):
        clone.backward(np.ones((4, 5, 3, 3), np.float32))
    bn.backward(np.ones((4, 5, 3, 3), np.float32))  # the original still can


def test_fresh_module_round_trips(rng):
    for how, copier in COPIERS.items():
        clone = copier(bnorm.BatchNorm1d(3))
        assert clone.training and clone.num_batches_tracked == 0, how
        np.testing.assert_array_equal(clone.running_var, np.ones(3, np.float32))


def test_deepcopy_of_containers_keeps_identity():
    """deepcopy's memo: a module referenced twice is copied once."""
    bn = bnorm.BatchNorm2d(4)
    pair = copy.deepcopy([bn, bn])
    assert pair[0] is pair[1] and pair[0] is not bn
    pair = pickle.loads(pickle.dumps([bn, bn]))
    assert pair[0] is pair[1]


class Tagged(bnorm.BatchNorm2d):
    """A user subclass with an instance dict (no __slots__)."""


def test_subclass_with_instance_attributes(rng):
    bn = Tagged(3, momentum=0.5)
    bn.tag = {"layer": [1, 2]}
    bn(input_for(2, 3, rng, np.float32))
    for how, copier in COPIERS.items():
        clone = copier(bn)
        assert type(clone) is Tagged, how
        assert clone.tag == bn.tag, how
        assert_same_module(bn, clone)
    deep = copy.deepcopy(bn)
    assert deep.tag is not bn.tag and deep.tag["layer"] is not bn.tag["layer"]


@pytest.mark.parametrize("how", COPIERS)
def test_copy_of_a_relu_float16_module_computes_the_same(how, rng):
    bn = bnorm.BatchNorm3d(5, dtype=np.float16, activation="relu", momentum=None)
    for _ in range(2):
        bn(input_for(3, 5, rng, np.float16))
    clone = COPIERS[how](bn)
    x = input_for(3, 5, rng, np.float16)
    dy = rng.standard_normal(x.shape).astype(np.float16)
    np.testing.assert_array_equal(clone(x), bn(x))
    np.testing.assert_array_equal(clone.backward(dy), bn.backward(dy))
    np.testing.assert_array_equal(clone.running_var, bn.running_var)
    assert clone.num_batches_tracked == bn.num_batches_tracked == 3


def test_pickle_is_compact():
    """The pickle holds the parameters, not a saved input or other large state."""
    bn = bnorm.BatchNorm2d(8)
    bn(np.ones((64, 8, 32, 32), np.float32))  # a 2 MiB input kept for backward
    assert len(pickle.dumps(bn)) < 2048
