"""Validation of the oracle itself: bnorm.testing.reference against PyTorch and finite differences.

Everything here is float64 and needs no compiled bnorm, so it can run (and
must pass) before the extension exists.  The reference is loaded through the
``reference`` fixture for that reason.
"""

import numpy as np
import pytest

# (input shape) per torch class: BatchNorm1d takes 2D and 3D input, 2d 4D, 3d 5D.
# Odd sizes, C = 1 and spatial sizes of 1 are all in here.
SHAPES = [(5, 3), (4, 3, 7), (3, 4, 5, 6), (2, 1, 1, 3), (7, 2, 1, 1), (2, 3, 3, 4, 5)]

OPTIONS = [
    {},
    {"momentum": None},
    {"momentum": 0.0},
    {"momentum": 1.0},
    {"eps": 1e-3, "momentum": 0.3},
    {"affine": False},
    {"track_running_stats": False},
    {"affine": False, "track_running_stats": False},
]


def random_problem(rng, shape, offset=0.0, scale=1.0):
    """x with per-channel offsets and spreads, dy, and random gamma/beta (negative gamma too)."""
    C = shape[1]
    channel_offset = offset + rng.normal(size=C).reshape((1, C) + (1,) * (len(shape) - 2))
    x = channel_offset + scale * rng.uniform(0.5, 2.0) * rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    gamma = rng.uniform(-2.0, 2.0, C)
    beta = rng.normal(size=C)
    return x, dy, gamma, beta


# ----------------------------------------------------------------------------
# the functions, against torch's functional batch_norm with autograd
# ----------------------------------------------------------------------------

def test_batch_stats_match_torch(reference, torch, rng):
    for shape in SHAPES:
        x, *_ = random_problem(rng, shape, offset=100.0)
        dims = (0,) + tuple(range(2, len(shape)))
        var_t, mean_t = torch.var_mean(torch.from_numpy(x), dim=dims, unbiased=False)
        mean, var = reference.batch_stats(x)
        assert mean.dtype == var.dtype == np.float64 and mean.shape == var.shape == (shape[1],)
        np.testing.assert_allclose(mean, mean_t.numpy(), rtol=1e-14)
        np.testing.assert_allclose(var, var_t.numpy(), rtol=1e-11)


def _torch_functional(torch, x, dy, gamma, beta, mean, var, eps, training):
    """torch.nn.functional.batch_norm and its autograd gradients, as NumPy arrays."""
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(gamma).requires_grad_(True)
    bt = torch.from_numpy(beta).requires_grad_(True)
    mt = None if mean is None else torch.from_numpy(mean.copy())
    vt = None if var is None else torch.from_numpy(var.copy())
    yt = torch.nn.functional.batch_norm(xt, mt, vt, gt, bt, training=training, eps=eps)
    yt.backward(torch.from_numpy(dy))
    return {"y": yt.detach().numpy(), "dx": xt.grad.numpy(), "dgamma": gt.grad.numpy(),
            "dbeta": bt.grad.numpy()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_forward_backward_match_torch(reference, checks, torch, rng, shape, training, eps):
    x, dy, gamma, beta = random_problem(rng, shape, offset=3.0)
    if training:
        mean = var = None
        used_mean = reference.batch_stats(x)[0]
    else:  # running statistics deliberately unlike the batch's
        mean = used_mean = rng.normal(size=shape[1])
        var = rng.uniform(0.1, 3.0, shape[1])
    expected = _torch_functional(torch, x, dy, gamma, beta, mean, var, eps, training)
    actual = {"y": reference.forward(x, gamma, beta, mean, var, eps)}
    actual["dx"], actual["dgamma"], actual["dbeta"] = reference.backward(
        dy, x, gamma, mean, var, eps, training=training)
    model = checks.Step(x, np.float64, eps, used_mean, training, weight=gamma, dy=dy,
                        conditioning="input")
    for name, value in actual.items():
        assert value.dtype == np.float64
        model.assert_close(value, expected[name], name)


def test_affine_none_means_identity_parameters(reference, rng):
    x, dy, _, _ = random_problem(rng, (4, 3, 2, 2))
    C = x.shape[1]
    np.testing.assert_array_equal(reference.forward(x), reference.forward(x, np.ones(C), np.zeros(C)))
    for a, b in zip(reference.backward(dy, x), reference.backward(dy, x, np.ones(C))):
        np.testing.assert_array_equal(a, b)


def test_update_running_matches_torch(reference, torch, rng):
    x, *_ = random_problem(rng, (6, 4, 3, 2), offset=-2.0)
    M = 6 * 3 * 2
    rm, rv = rng.normal(size=4), rng.uniform(0.5, 2.0, 4)
    for momentum in (0.0, 0.1, 0.75, 1.0):
        rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        torch.nn.functional.batch_norm(torch.from_numpy(x), rm_t, rv_t, training=True,
                                       momentum=momentum)
        mean, var = reference.batch_stats(x)
        new_mean, new_var = reference.update_running(rm, rv, mean, var, M, momentum)
        np.testing.assert_allclose(new_mean, rm_t.numpy(), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(new_var, rv_t.numpy(), rtol=1e-14)
    with pytest.raises(ValueError):
        reference.update_running(rm, rv, mean, var, 1, 0.1)


# ----------------------------------------------------------------------------
# the module, against torch.nn.BatchNorm*d over several steps
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS, ids=repr)
def test_module_steps_match_torch(reference, checks, torch, rng, shape, options):
    ref = reference.ReferenceBatchNorm(shape[1], **options)
    if ref.affine:
        _, _, ref.gamma, ref.beta = random_problem(rng, shape)
    tbn = checks.torch_like(ref, len(shape))
    for training in (True, True, True, False, False):
        ref.train(training)
        x, dy, _, _ = random_problem(rng, shape, offset=rng.normal(scale=5.0))
        checks.check_step(ref, x, dy, torch_bn=tbn)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (0, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_module_empty_input_matches_torch(reference, checks, torch, rng, shape, training):
    ref = reference.ReferenceBatchNorm(3).train(training)
    tbn = checks.torch_like(ref, len(shape))
    x, dy, _, _ = random_problem(rng, shape)
    checks.check_step(ref, x, dy, torch_bn=tbn)
    assert ref.num_batches_tracked == int(training)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)])
@pytest.mark.parametrize("options", [{}, {"track_running_stats": False}], ids=repr)
@pytest.mark.parametrize("training", [True, False])
def test_module_one_value_per_channel_matches_torch(reference, checks, torch, rng, shape, options,
                                                    training):
    """Batch statistics of one value are an error (also in eval mode without running stats)."""
    ref = reference.ReferenceBatchNorm(3, **options).train(training)
    tbn = checks.torch_like(ref, len(shape))
    x, dy, _, _ = random_problem(rng, shape)
    checks.check_step(ref, x, dy, torch_bn=tbn)


def test_momentum_none_is_cumulative_average(reference, rng):
    """With momentum=None the running mean is the plain average of the batch means."""
    ref = reference.ReferenceBatchNorm(2, momentum=None)
    batches = [random_problem(rng, (4, 2, 3), offset=10.0 * k)[0] for k in range(5)]
    for x in batches:
        ref(x)
    means = [reference.batch_stats(x)[0] for x in batches]
    unbiased = [reference.batch_stats(x)[1] * 12 / 11 for x in batches]
    assert ref.num_batches_tracked == 5
    np.testing.assert_allclose(ref.running_mean, np.mean(means, axis=0), rtol=1e-13)
    # the initial running_var of 1 is weighted by (1 - 1/1) = 0 at the first step
    np.testing.assert_allclose(ref.running_var, np.mean(unbiased, axis=0), rtol=1e-13)


def test_module_state_and_errors(reference):
    ref = reference.ReferenceBatchNorm(3, affine=False, track_running_stats=False)
    assert ref.gamma is None and ref.running_mean is None and ref.num_batches_tracked is None
    assert ref.eval() is ref and not ref.training and ref.train() is ref and ref.training
    with pytest.raises(RuntimeError, match="before forward"):
        ref.backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="expected 3 channels"):
        ref(np.zeros((2, 4)))
    with pytest.raises(TypeError):
        ref(np.zeros((2, 3), dtype=np.int64))


# ----------------------------------------------------------------------------
# special values
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1e4 + 0.3, 1e-30])
def test_constant_channel_gives_exactly_beta(reference, rng, value):
    x, dy, gamma, beta = random_problem(rng, (3, 4, 5, 7))
    x[:, 2] = value
    mean, var = reference.batch_stats(x)
    assert mean[2] == value and var[2] == 0.0
    y = reference.forward(x, gamma, beta)
    np.testing.assert_array_equal(y[:, 2], beta[2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value_stays_in_its_channel(reference, rng, bad):
    x, dy, gamma, beta = random_problem(rng, (3, 4, 5, 7))
    clean = reference.forward(x, gamma, beta)
    clean_grads = reference.backward(dy, x, gamma)
    x[1, 2, 3, 4] = bad
    y = reference.forward(x, gamma, beta)
    dx, dgamma, dbeta = reference.backward(dy, x, gamma)
    others = [0, 1, 3]
    np.testing.assert_array_equal(y[:, others], clean[:, others])
    np.testing.assert_array_equal(dx[:, others], clean_grads[0][:, others])
    np.testing.assert_array_equal(dgamma[others], clean_grads[1][others])
    assert np.isnan(y[:, 2]).all() and np.isnan(dx[:, 2]).all() and np.isnan(dgamma[2])


def test_float32_input_is_computed_in_float64(reference, rng):
    x, dy, gamma, beta = random_problem(rng, (4, 3, 5))
    x32 = x.astype(np.float32)
    y = reference.forward(x32, gamma, beta)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, reference.forward(x32.astype(np.float64), gamma, beta))


# ----------------------------------------------------------------------------
# finite differences
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(6, 2), (3, 2, 4), (2, 3, 2, 3), (2, 2, 2, 1, 3)])
@pytest.mark.parametrize("training", [True, False], ids=["batch-stats", "running-stats"])
def test_backward_matches_finite_differences(reference, checks, rng, shape, training):
    """d/dx, d/dgamma, d/dbeta of L = sum(w * y) against central differences."""
    x, w, gamma, beta = random_problem(rng, shape)
    mean = var = None
    if not training:
        mean, var = rng.normal(size=shape[1]), rng.uniform(0.5, 2.0, shape[1])

    def loss():
        return float(np.sum(w * reference.forward(x, gamma, beta, mean, var, eps=1e-3)))

    dx, dgamma, dbeta = reference.backward(w, x, gamma, mean, var, eps=1e-3, training=training)
    for name, analytic, wrt in (("dx", dx, x), ("dgamma", dgamma, gamma), ("dbeta", dbeta, beta)):
        checks.assert_gradient_close(analytic, checks.numerical_gradient(loss, wrt), what=name)


# ----------------------------------------------------------------------------
# the error model, against PyTorch's float32 kernels
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("training", [True, False])
def test_error_model_covers_torch_float32(reference, checks, torch, rng, offset, training):
    """The "torch" bounds hold for PyTorch's own float32 results.

    The parity tests compare bnorm with PyTorch within the sum of both
    bounds, so the bounds must at least be true of PyTorch.
    """
    shape = (8, 4, 16, 16)
    x, dy, gamma, beta = (a.astype(np.float32) for a in random_problem(rng, shape, offset=offset))
    rm, rv = (offset + rng.normal(size=4)).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    tbn = torch.nn.BatchNorm2d(4).train(training)
    with torch.no_grad():
        for tensor, value in ((tbn.weight, gamma), (tbn.bias, beta), (tbn.running_mean, rm),
                              (tbn.running_var, rv)):
            tensor.copy_(torch.from_numpy(value))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tbn(xt)
    yt.backward(torch.from_numpy(dy))
    torch_values = {"y": yt.detach().numpy(), "dx": xt.grad.numpy(),
                    "dgamma": tbn.weight.grad.numpy(), "dbeta": tbn.bias.grad.numpy()}

    mean, var = reference.batch_stats(x) if training else (rm, rv)
    expected = {"y": reference.forward(x, gamma, beta, mean, var)}
    expected["dx"], expected["dgamma"], expected["dbeta"] = reference.backward(
        dy, x, gamma, mean, var, training=training)
    if training:
        expected["running_mean"], expected["running_var"] = reference.update_running(
            rm, rv, mean, var, x.size // 4, 0.1)
        torch_values.update(running_mean=tbn.running_mean.numpy(),
                            running_var=tbn.running_var.numpy())
    model = checks.Step(x, np.float32, 1e-5, mean, training, weight=gamma, dy=dy, conditioning="input")
    for name, value in expected.items():
        model.assert_close(torch_values[name], value, name)
