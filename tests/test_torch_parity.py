"""bnorm against torch.nn.BatchNorm1d/2d/3d with autograd.

Every step compares output, dx, weight/bias gradients, running statistics and
num_batches_tracked with PyTorch's, within the sum of both libraries' error
bounds (conftest.py).  torch gets bnorm's running statistics before each step
so that every step is checked on its own.  test_report_max_errors prints the
largest errors seen, against the reference and against PyTorch (run with -s).
"""

import numpy as np
import pytest

import bnorm
from bnorm.testing import reference

CLASSES = {2: bnorm.BatchNorm1d, 3: bnorm.BatchNorm1d, 4: bnorm.BatchNorm2d, 5: bnorm.BatchNorm3d}
SHAPES = [(6, 3), (4, 3, 9), (3, 4, 5, 7), (2, 3, 3, 4, 5)]
DTYPES = [np.float32, np.float64]
OPTIONS = [
    {},
    {"momentum": None},
    {"momentum": 0.5, "eps": 1e-3},
    {"affine": False},
    {"track_running_stats": False},
    {"affine": False, "track_running_stats": False},
]
STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def make_pair(shape, dtype, rng, checks, **options):
    """A bnorm module with random gamma/beta and the equivalent torch module."""
    bn = CLASSES[len(shape)](shape[1], dtype=dtype, **options)
    if bn.affine:
        bn.gamma[...] = rng.uniform(-2.0, 2.0, shape[1])
        bn.beta[...] = rng.normal(size=shape[1])
    return bn, checks.torch_like(bn, len(shape))


def batch(rng, shape, dtype, offset=0.0):
    x = offset + rng.normal(size=(1, shape[1]) + (1,) * (len(shape) - 2)) + rng.standard_normal(shape)
    return x.astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}D")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("options", OPTIONS, ids=repr)
def test_steps_match_torch(checks, torch, rng, shape, dtype, options):
    """Three training steps, then eval forward and eval-mode backward."""
    bn, tbn = make_pair(shape, dtype, rng, checks, **options)
    for training in (True, True, True, False, False):
        bn.train(training)
        checks.check_step(bn, *batch(rng, shape, dtype, offset=2.0), torch_bn=tbn)
    if bn.track_running_stats:
        assert bn.num_batches_tracked == int(tbn.num_batches_tracked) == 3


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_momentum_none_from_a_set_count(checks, torch, rng, dtype):
    """momentum=None uses 1 / num_batches_tracked, counting from a value set by the user."""
    shape = (4, 3, 5, 5)
    bn, tbn = make_pair(shape, dtype, rng, checks, momentum=None)
    bn.num_batches_tracked = 9
    for _ in range(3):
        checks.check_step(bn, *batch(rng, shape, dtype), torch_bn=tbn)
    assert bn.num_batches_tracked == 12


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (3, 3, 0)], ids=["N=0", "L=0"])
def test_empty_batch_matches_torch(checks, torch, rng, shape):
    bn, tbn = make_pair(shape, np.float32, rng, checks)
    for training in (True, False):
        bn.train(training)
        checks.check_step(bn, *batch(rng, shape, np.float32), torch_bn=tbn)
    assert bn.num_batches_tracked == int(tbn.num_batches_tracked) == 1


# ----------------------------------------------------------------------------
# state_dict round trips
# ----------------------------------------------------------------------------

def trained_torch(torch, rng, cls_name, C, torch_dtype, steps=3, **options):
    tbn = getattr(torch.nn, cls_name)(C, dtype=torch_dtype, **options)
    with torch.no_grad():
        if tbn.affine:
            tbn.weight.uniform_(-2, 2, generator=torch.Generator().manual_seed(1))
            tbn.bias.normal_(generator=torch.Generator().manual_seed(2))
    shape = (5, C, 4, 4) if cls_name == "BatchNorm2d" else (5, C)
    for _ in range(steps):
        tbn(torch.from_numpy(rng.standard_normal(shape)).to(torch_dtype))
    return tbn, shape


@pytest.mark.parametrize("options", OPTIONS, ids=repr)
def test_state_dict_keys_match_torch(torch, options):
    bn = bnorm.BatchNorm2d(3, **options)
    tbn = torch.nn.BatchNorm2d(3, **options)
    state = bn.state_dict()
    assert list(state) == list(tbn.state_dict())
    for key, value in state.items():
        assert isinstance(value, np.ndarray), key
        expected_dtype = np.int64 if key == "num_batches_tracked" else np.float32
        assert value.dtype == expected_dtype and value.shape == tuple(tbn.state_dict()[key].shape), key


@pytest.mark.parametrize("torch_dtype, dtype", [("float32", np.float32), ("float64", np.float64),
                                                ("float64", np.float32), ("float32", np.float64)])
def test_state_dict_from_torch(checks, torch, rng, torch_dtype, dtype):
    """torch.state_dict() (tensors) -> bnorm.load_state_dict: same values, cast like torch."""
    tbn, shape = trained_torch(torch, rng, "BatchNorm2d", 4, getattr(torch, torch_dtype))
    bn = bnorm.BatchNorm2d(4, dtype=dtype)
    bn.load_state_dict(tbn.state_dict())
    state = bn.state_dict()
    for key, tensor in tbn.state_dict().items():
        expected = tensor.numpy().astype(np.int64 if key == "num_batches_tracked" else dtype)
        np.testing.assert_array_equal(state[key], expected, err_msg=key)
        assert state[key].dtype == expected.dtype, key
    assert bn.num_batches_tracked == 3
    # the loaded state is what eval mode normalises with
    x = rng.standard_normal(shape).astype(dtype)
    loaded = {key: tensor.numpy().astype(dtype) for key, tensor in tbn.state_dict().items()}
    mean, var = loaded["running_mean"], loaded["running_var"]
    model = checks.Step(x, dtype, bn.eps, mean, False, weight=loaded["weight"])
    model.assert_close(bn.eval()(x), reference.forward(x, loaded["weight"], loaded["bias"], mean, var), "y")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("options", OPTIONS, ids=repr)
def test_state_dict_to_torch(torch, rng, dtype, options):
    """bnorm.state_dict() -> torch.from_numpy -> torch load_state_dict (strict): same values."""
    bn = bnorm.BatchNorm1d(3, dtype=dtype, **options)
    if bn.affine:
        bn.gamma[...] = rng.uniform(-2, 2, 3)
        bn.beta[...] = rng.normal(size=3)
    for _ in range(4):
        bn(rng.standard_normal((6, 3, 5)).astype(dtype))
    tbn = torch.nn.BatchNorm1d(3, dtype=getattr(torch, np.dtype(dtype).name), **options)
    tbn.load_state_dict({k: torch.from_numpy(v) for k, v in bn.state_dict().items()})
    for key, tensor in tbn.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), bn.state_dict()[key], err_msg=key)
    if bn.track_running_stats:
        assert int(tbn.num_batches_tracked) == bn.num_batches_tracked == 4


def test_state_dict_returns_copies():
    bn = bnorm.BatchNorm2d(2)
    state = bn.state_dict()
    for key in ("weight", "bias", "running_mean", "running_var"):
        state[key][...] = 42.0
    state["num_batches_tracked"][...] = 42
    fresh = bn.state_dict()
    np.testing.assert_array_equal(fresh["weight"], 1.0)
    np.testing.assert_array_equal(fresh["running_mean"], 0.0)
    assert bn.num_batches_tracked == 0 and fresh["num_batches_tracked"] == 0


def test_load_state_dict_casts_and_strict_false(torch):
    bn = bnorm.BatchNorm2d(3)
    bn.load_state_dict({"weight": np.array([1, 2, 3]), "bias": torch.tensor([0.5, 0.25, 0.0], dtype=torch.float16),
                        "running_mean": np.full(3, 0.1), "running_var": np.full(3, 2.0, dtype=np.float16),
                        "num_batches_tracked": torch.tensor(17)})
    np.testing.assert_array_equal(bn.gamma, np.array([1, 2, 3], dtype=np.float32))
    np.testing.assert_array_equal(bn.beta, np.array([0.5, 0.25, 0.0], dtype=np.float32))
    np.testing.assert_array_equal(bn.running_mean, np.float32(0.1))
    assert bn.gamma.dtype == bn.running_mean.dtype == np.float32 and bn.num_batches_tracked == 17
    bn.load_state_dict({"bias": np.full(3, 7.0)}, strict=False)
    np.testing.assert_array_equal(bn.beta, 7.0)
    np.testing.assert_array_equal(bn.gamma, [1, 2, 3])


# ----------------------------------------------------------------------------
# the errors for the closing note
# ----------------------------------------------------------------------------

REPORT_SHAPES = [(32, 16, 28, 28), (8, 64, 14, 14), (4, 3, 7, 9), (64, 256), (16, 8, 4, 8, 8)]


def test_report_max_errors(checks, torch, rng, capsys):
    """Largest errors of bnorm against the reference and against PyTorch, printed (pytest -s).

    Inputs are N(0, 1) plus a per-channel shift (y of order 1, so absolute
    errors are meaningful), random gamma/beta, two training steps and an eval
    step.  Every error is also asserted to be within its bound.
    """
    worst = {}
    for dtype in DTYPES:
        for shape in REPORT_SHAPES:
            for against in ("reference", "torch"):
                bn = CLASSES[len(shape)](shape[1], dtype=dtype)
                bn.gamma[...] = rng.uniform(0.5, 1.5, shape[1])
                bn.beta[...] = rng.normal(size=shape[1])
                tbn = checks.torch_like(bn, len(shape)) if against == "torch" else None
                for training in (True, True, False):
                    bn.train(training)
                    errors = checks.check_step(bn, *batch(rng, shape, dtype), torch_bn=tbn)
                    for quantity, (err, ratio) in errors.items():
                        key = (np.dtype(dtype).name, against, quantity)
                        old = worst.get(key, (0.0, 0.0))
                        worst[key] = (max(old[0], err), max(old[1], ratio))
    with capsys.disabled():
        print("\nlargest |bnorm - expected| over", REPORT_SHAPES, "(ratio = error / tolerance)")
        for (dtype, against, quantity), (err, ratio) in sorted(worst.items()):
            print(f"  {dtype:8s} vs {against:9s} {quantity:13s} {err:10.3e}   ratio {ratio:.3f}")
    assert all(ratio <= 1.0 for _, ratio in worst.values())
    assert {key[2] for key in worst} == {"y", "dx", "dgamma", "dbeta", "running_mean", "running_var"}
