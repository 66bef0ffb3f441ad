"""PyTorch parity gaps found by torch's own samples: bias=False, the weight/bias
names, assignable eps/momentum, momentum outside [0, 1], and the functional
layer's handling of strided, read-only and missing running statistics. Each test
compares with what torch itself does."""
import pickle
import re

import numpy as np
import pytest

import bnorm
from bnorm import functional as F

torch = pytest.importorskip("torch")


def torch_bn(cls_name, *args, **kwargs):
    return getattr(torch.nn, cls_name)(*args, **kwargs).double()


def test_bias_false_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 5, 5))
    t = torch.nn.BatchNorm2d(3, bias=False).double()
    with torch.no_grad():
        t.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
    b = bnorm.BatchNorm2d(3, bias=False, dtype=np.float64)
    assert b.bias is None and b.beta is None and t.bias is None
    assert list(b.state_dict()) == list(t.state_dict())  # no 'bias' key
    b.load_state_dict(t.state_dict())  # strict: torch's dict loads as is
    xt = torch.from_numpy(x).requires_grad_()
    yt = t(xt)
    yt.backward(torch.ones_like(yt) * torch.arange(3.0, dtype=torch.float64).view(1, 3, 1, 1))
    y = b(x)
    dx = b.backward(np.ones_like(y) * np.arange(3.0).reshape(1, 3, 1, 1))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.grad_gamma, t.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert b.grad_beta is None
    np.testing.assert_allclose(b.running_var, t.running_var.numpy(), rtol=1e-12)
    with pytest.raises(AttributeError, match="bias=False"):
        b.beta = np.zeros(3)


@pytest.mark.parametrize("affine", [True, False])
def test_bias_false_survives_copies(affine):
    import copy

    b = bnorm.BatchNorm1d(3, affine=affine, bias=False)
    for clone in (pickle.loads(pickle.dumps(b)), copy.copy(b), copy.deepcopy(b)):
        assert clone.beta is None and clone.affine == affine and (clone.gamma is not None) == affine
        assert list(clone.state_dict()) == list(torch.nn.BatchNorm1d(3, affine=affine, bias=False).state_dict())


def test_affine_false_with_bias_false_is_affine_false():
    assert list(bnorm.BatchNorm2d(3, affine=False, bias=False).state_dict()) == \
        list(torch.nn.BatchNorm2d(3, affine=False, bias=False).state_dict())


def test_bias_is_keyword_only_as_in_torch():
    with pytest.raises(TypeError):
        torch.nn.BatchNorm2d(3, 1e-5, 0.1, True, True, None, None, False)
    with pytest.raises(TypeError, match="BatchNorm2d"):
        bnorm.BatchNorm2d(3, 1e-5, 0.1, True, True, None, None, False)


def test_unknown_keyword_names_the_public_class():
    with pytest.raises(TypeError) as info:
        bnorm.BatchNorm3d(3, biass=False)
    assert "BatchNorm3d" in str(info.value) and "_BatchNorm" not in str(info.value)


def test_weight_and_bias_are_gamma_and_beta():
    b = bnorm.BatchNorm2d(3)
    b.weight[0] = 7.0
    assert b.gamma[0] == 7.0
    b.bias = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(b.beta, [1, 2, 3])
    assert np.shares_memory(b.weight, b.gamma) and np.shares_memory(b.bias, b.beta)
    assert bnorm.BatchNorm2d(3, affine=False).weight is None


def test_eps_and_momentum_are_assignable_and_used():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 2, 3))
    t = torch_bn("BatchNorm1d", 2)
    b = bnorm.BatchNorm1d(2, dtype=np.float64)
    for module in (t, b):
        module.eps = 0.5
        module.momentum = -1.2  # torch's own samples use this value
    y = b(x)
    yt = t(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, yt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.running_mean, t.running_mean.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b.running_var, t.running_var.numpy(), rtol=1e-12)
    b.momentum = None
    assert b.momentum is None and b.eps == 0.5


@pytest.mark.parametrize("name, value, exc, pattern", [
    ("eps", -1.0, ValueError, "eps must be positive and finite"),
    ("eps", float("nan"), ValueError, "eps"),
    ("eps", "small", TypeError, "eps must be a float, got str"),
    ("momentum", float("inf"), ValueError, "momentum must be a finite float or None"),
    ("momentum", "0.1", TypeError, "momentum must be a float, got str"),
])
def test_eps_momentum_assignment_is_validated(name, value, exc, pattern):
    b = bnorm.BatchNorm2d(3)
    before = getattr(b, name)
    with pytest.raises(exc, match=pattern) as info:
        setattr(b, name, value)
    assert "_BatchNorm" not in str(info.value)
    assert getattr(b, name) == before
    # the functional layer checks the same values with the same words
    with pytest.raises(exc, match=pattern):
        F.batch_norm(np.ones((2, 3), np.float32), training=True, **{name: value})


@pytest.mark.parametrize("momentum", [-1.2, 0.0, 1.0, 1.7])
def test_functional_momentum_outside_unit_interval(momentum):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3, 4))
    rm, rv = rng.normal(size=3), rng.uniform(1, 2, size=3)
    tm, tv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    yt = torch.nn.functional.batch_norm(torch.from_numpy(x), tm, tv, training=True, momentum=momentum)
    y, _, _ = F.batch_norm(x, rm, rv, training=True, momentum=momentum)
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rm, tm.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rv, tv.numpy(), rtol=1e-12)


def test_functional_momentum_none_is_a_type_error_as_in_torch():
    x = np.ones((2, 3))
    with pytest.raises(TypeError):
        torch.nn.functional.batch_norm(torch.from_numpy(x), torch.zeros(3, dtype=torch.float64),
                                       torch.ones(3, dtype=torch.float64), training=True, momentum=None)
    with pytest.raises(TypeError, match="momentum"):
        F.batch_norm(x, np.zeros(3), np.ones(3), training=True, momentum=None)


def test_functional_updates_strided_running_stats_in_place():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 2, 2))
    rm_base, rv_base = np.zeros(6), np.ones(6)
    rm, rv = rm_base[::2], rv_base[::-2]  # strided and reversed views
    tm, tv = torch.zeros(6, dtype=torch.float64)[::2], torch.ones(6, dtype=torch.float64).flip(0)[::2]
    torch.nn.functional.batch_norm(torch.from_numpy(x), tm, tv, training=True)
    F.batch_norm(x, rm, rv, training=True)
    np.testing.assert_allclose(rm, tm.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(rv, tv.numpy(), rtol=1e-12)
    np.testing.assert_array_equal(rm_base[1::2], 0.0)  # the entries between stay untouched
    np.testing.assert_array_equal(rv_base[0::2], 1.0)


def test_functional_eval_reads_strided_and_read_only_running_stats():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 3, 5))
    rm, rv = rng.normal(size=6)[::2], rng.uniform(1, 2, size=6)[::2]
    for a in (rm, rv):
        a.flags.writeable = False
    y, _, _ = F.batch_norm(x, rm, rv, training=False)
    yt = torch.nn.functional.batch_norm(torch.from_numpy(x), torch.from_numpy(rm.copy()),
                                        torch.from_numpy(rv.copy()), training=False)
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, rm, rv, training=True)  # training writes them


@pytest.mark.parametrize("missing", ["running_mean", "running_var"])
def test_functional_eval_without_running_stats_raises_torchs_error(missing):
    x = np.ones((2, 3))
    stats = {"running_mean": np.zeros(3), "running_var": np.ones(3)}
    stats[missing] = None
    with pytest.raises(RuntimeError) as torch_info:
        torch.nn.functional.batch_norm(torch.from_numpy(x), *[None if v is None else torch.from_numpy(v)
                                                              for v in stats.values()], training=False)
    with pytest.raises(RuntimeError, match=re.escape(f"{missing} must be defined in evaluation mode")) as info:
        F.batch_norm(x, stats["running_mean"], stats["running_var"], training=False)
    if missing == "running_mean":  # the one torch checks first
        assert str(info.value) == str(torch_info.value)


# ---- messages that say how to fix the call ----

def test_torch_tensor_input_says_numpy():
    with pytest.raises(TypeError, match=r"torch\.Tensor.*x\.numpy\(\)"):
        bnorm.BatchNorm2d(3)(torch.ones(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"torch\.Tensor.*x\.numpy\(\)"):
        F.batch_norm(torch.ones(2, 3), training=True)


def test_channels_last_array_without_transpose_says_moveaxis():
    x = np.ones((2, 4, 5, 3), np.float32)  # (N, H, W, C)
    with pytest.raises(ValueError, match=r"expected 3 channels \(axis 1\), got 4; the last axis has 3.*moveaxis"):
        bnorm.BatchNorm2d(3)(x)
    y = bnorm.BatchNorm2d(3)(np.moveaxis(x, -1, 1))  # the advice works
    assert y.shape == (2, 3, 4, 5)
    with pytest.raises(ValueError) as info:
        bnorm.BatchNorm2d(3)(np.ones((2, 4, 5, 6), np.float32))
    assert "moveaxis" not in str(info.value)  # no such hint when the last axis does not fit either


def test_torch_dtype_names_the_argument():
    with pytest.raises(TypeError, match=r"dtype must be a NumPy dtype.*torch\.float32"):
        bnorm.BatchNorm2d(3, dtype=torch.float32)
