"""The batch-norm family beyond the core: fused ReLU, channels-last memory,
float16, and out= for in-place eval. Each is compared with PyTorch 2.13 (the
module with autograd) and, where PyTorch rounds differently, with the float64
reference."""
import numpy as np
import pytest

import bnorm
from bnorm.testing import reference as ref

MODULES = {1: bnorm.BatchNorm1d, 2: bnorm.BatchNorm2d, 3: bnorm.BatchNorm3d}
SHAPES = {1: (6, 5, 7), 2: (4, 5, 6, 7), 3: (3, 5, 4, 3, 5)}
FIGURES = []  # printed in pytest's summary by conftest.py


def torch_module(torch, dims, bn):
    cls = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[dims]
    tbn = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum).double()
    tbn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in bn.state_dict().items()})
    return tbn.train(bn.training)


def random_module(dims, rng, **options):
    bn = MODULES[dims](5, **options)
    bn.gamma[...] = rng.uniform(-2.0, 2.0, 5)  # negative scales too: the ReLU mask must follow them
    bn.beta[...] = rng.uniform(-1.0, 1.0, 5)
    bn.running_mean[...] = rng.uniform(-0.5, 0.5, 5)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 5)
    return bn


def tolerance(dtype, x):
    """A few roundings of O(1) outputs, amplified by |x| / std as forming x - mean is."""
    std = np.sqrt(ref.batch_stats(np.asarray(x, np.float64))[1]).min()
    return 32 * np.finfo(dtype).eps * (1.0 + np.abs(x).max() / std)


def torch_step(torch, tbn, x, dy, relu):
    xt = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_()
    yt = tbn(xt)
    if relu:
        yt = torch.relu(yt)
    yt.backward(torch.from_numpy(np.array(dy, dtype=np.float64)))
    return yt.detach().numpy(), xt.grad.numpy(), tbn.weight.grad.numpy(), tbn.bias.grad.numpy()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_fused_relu_matches_torch_relu_after_batch_norm(torch, rng, dims, dtype, training):
    bn = random_module(dims, rng, dtype=dtype, activation="relu").train(training)
    assert bn.activation == "relu"
    tbn = torch_module(torch, dims, bn)
    x = rng.standard_normal(SHAPES[dims]).astype(dtype)
    dy = rng.standard_normal(SHAPES[dims]).astype(dtype)
    y, dx = bn(x), bn.backward(dy)
    expected = torch_step(torch, tbn, x, dy, relu=True)
    tol = tolerance(dtype, x)
    assert (y >= 0).all() and (y == 0).any() and (y > 0).any()
    for got, want, what in zip((y, dx, bn.grad_gamma, bn.grad_beta), expected, ("y", "dx", "dgamma", "dbeta")):
        scale = np.sqrt(x.size) if what.startswith("dg") or what.startswith("db") else 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale * max(1.0, np.abs(want).max()), err_msg=what)
    if not training:  # constant statistics: no gradient where the output was clamped
        np.testing.assert_array_equal(dx[y == 0], 0)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=tol)


def test_functional_relu_matches_the_module(rng):
    bn = random_module(2, rng, activation="relu")
    x, dy = rng.standard_normal((2, 4, 5, 6, 7)).astype(np.float32)
    y, dx = bn(x), bn.backward(dy)
    fy, mean, invstd = bnorm.functional.batch_norm(x, None, None, bn.gamma, bn.beta, training=True, activation="relu")
    fdx, fdw, fdb = bnorm.functional.batch_norm_backward(dy, x, mean, invstd, bn.gamma, bias=bn.beta,
                                                         activation="relu")
    for got, want in ((fy, y), (fdx, dx), (fdw, bn.grad_gamma), (fdb, bn.grad_beta)):
        assert got.tobytes() == want.tobytes()


def test_activation_other_than_relu_is_rejected():
    with pytest.raises(ValueError, match=r"activation must be None or 'relu', got 'gelu'"):
        bnorm.BatchNorm2d(3, activation="gelu")


def channels_last(x):
    """x with the same logical shape whose memory is (N, *spatial, C), as NumPy users build it."""
    memory = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    return np.moveaxis(memory, -1, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_runs_in_place_of_its_layout_and_matches_torch(torch, rng, dims, dtype):
    bn = random_module(dims, rng, dtype=dtype)
    tbn = torch_module(torch, dims, bn)
    x = channels_last(rng.standard_normal(SHAPES[dims]).astype(dtype) * 3 + 1)
    dy = channels_last(rng.standard_normal(SHAPES[dims]).astype(dtype))
    y, dx = bn(x), bn.backward(dy)
    # the output keeps the input's memory layout, as torch.channels_last does
    assert y.strides == x.strides and dx.strides == x.strides
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    assert torch.from_numpy(y).is_contiguous(memory_format=memory_format)
    expected = torch_step(torch, tbn, x, dy, relu=False)
    tol = tolerance(dtype, x)
    np.testing.assert_allclose(y, expected[0], rtol=0, atol=tol * np.abs(expected[0]).max())
    np.testing.assert_allclose(dx, expected[1], rtol=0, atol=tol * np.abs(expected[1]).max())
    np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=tol)


def test_channels_last_and_channel_major_give_the_same_bits_per_layout(rng):
    # The two layouts sum in different orders, so equality is to rounding; but each
    # layout's result must not depend on how dy is laid out.
    x = channels_last(rng.standard_normal((3, 5, 6, 7)).astype(np.float32))
    dy = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
    bn = bnorm.BatchNorm2d(5)
    bn(x)
    dx_from_c_order = bn.backward(dy)
    dx_from_channels_last = bn.backward(channels_last(dy))
    assert dx_from_c_order.tobytes() == dx_from_channels_last.tobytes()
    np.testing.assert_allclose(bnorm.BatchNorm2d(5)(np.ascontiguousarray(x)), bn(x), atol=1e-6)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_float16_keeps_float32_parameters_and_matches_torch(torch, rng, dims, training):
    bn = random_module(dims, rng, dtype=np.float16).train(training)
    assert bn.dtype == np.float16
    assert {a.dtype for a in (bn.gamma, bn.beta, bn.running_mean, bn.running_var)} == {np.dtype(np.float32)}
    x = (rng.standard_normal(SHAPES[dims]) * 2 + 3).astype(np.float16)
    dy = rng.standard_normal(SHAPES[dims]).astype(np.float16)
    mean, var = (None, None) if training else (bn.running_mean, bn.running_var)
    y_ref = ref.forward(x, bn.gamma, bn.beta, mean, var)
    y, dx = bn(x), bn.backward(dy)
    assert y.dtype == dx.dtype == np.float16 and bn.grad_gamma.dtype == np.float32
    # within float16 rounding of the float64 reference: half an ulp of the result,
    # plus the (far smaller) float32 rounding of the way there
    ulp = np.spacing(np.abs(y_ref).astype(np.float16)).astype(np.float64)
    assert (np.abs(y - y_ref) <= 0.5 * ulp + 1e-6 * (1 + np.abs(y_ref))).all()
    dx_ref = ref.backward(dy, x, bn.gamma, mean, var, training=training)[0]
    ulp = np.spacing(np.abs(dx_ref).astype(np.float16)).astype(np.float64)
    assert (np.abs(dx - dx_ref) <= 0.5 * ulp + 1e-5 * np.abs(dx_ref).max()).all()
    # and PyTorch's own mixed-precision module agrees to float16 rounding
    cls = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[dims]
    tbn = cls(5).train(training)
    tbn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in bn.state_dict().items()}, strict=False)
    tbn.weight.data, tbn.bias.data = torch.from_numpy(bn.gamma.copy()), torch.from_numpy(bn.beta.copy())
    if not training:
        tbn.running_mean.copy_(torch.from_numpy(bn.running_mean))
        tbn.running_var.copy_(torch.from_numpy(bn.running_var))
    yt = tbn(torch.from_numpy(x)).detach().numpy()
    assert yt.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), yt.astype(np.float64), rtol=0,
                               atol=2 * np.spacing(np.float16(np.abs(y_ref).max())))


def test_float16_module_rejects_float32_input():
    with pytest.raises(TypeError, match=r"expected float16 input, got float32"):
        bnorm.BatchNorm2d(3, dtype=np.float16)(np.ones((2, 3, 2, 2), np.float32))


# Rows shorter than the kernels' 32-element chunks, rows that end in a partial chunk
# (float16 computes it as a chunk overlapping the previous one, before writing), and
# an output of >= 16 MiB, which is written with streaming stores after a head chunk.
# Eval with short rows runs in memory order (also streamed from 16 MiB: the last two).
IN_PLACE_CASES = [((2, 5, 3, 4), np.float32), ((2, 5, 37, 41), np.float32), ((2, 5, 37, 41), np.float16),
                  ((2, 5, 37, 41), np.float64), ((2, 5, 1031, 1031), np.float16), ((1, 5, 1031, 1031), np.float32),
                  ((2100, 5, 43, 19), np.float16), ((1800, 5, 43, 11), np.float32)]


@pytest.mark.parametrize("shape, dtype", IN_PLACE_CASES, ids=lambda v: str(v) if isinstance(v, tuple) else None)
def test_eval_forward_in_place(rng, shape, dtype):
    bn = random_module(2, rng, dtype=dtype).eval()
    x = rng.standard_normal(shape).astype(dtype)
    expected = bn(x)
    reference = ref.forward(x, bn.gamma, bn.beta, bn.running_mean, bn.running_var)
    np.testing.assert_allclose(expected, reference, rtol=0, atol=tolerance(dtype, x))
    y = bn(x, out=x)
    assert y is x
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(RuntimeError, match=r"overwrote \(out=x\)"):
        bn.backward(np.ones_like(x))


def test_training_forward_refuses_to_overwrite_its_input(rng):
    bn = random_module(2, rng)
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    before = x.copy()
    with pytest.raises(ValueError, match="cannot be the input in training mode"):
        bn(x, out=x)
    np.testing.assert_array_equal(x, before)
    buffer = rng.standard_normal(2 * x.size).astype(np.float32)
    shifted_x, shifted_out = buffer[: x.size].reshape(x.shape), buffer[7 : 7 + x.size].reshape(x.shape)
    with pytest.raises(ValueError, match="must be the input itself or not overlap it"):
        bn.eval()(shifted_x, out=shifted_out)


def channels_last(a):
    """`a` (N, C, ...) with the same values in channels-last memory."""
    order = (0,) + tuple(range(2, a.ndim)) + (1,)
    return np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))


def float16_spacing(v):
    return np.spacing(np.abs(v).astype(np.float16)).astype(np.float64)


def test_float16_report_largest_errors(torch, rng):
    """float16 largest errors of y and dx, NCHW and channels-last, training and eval.
    Against the float64 reference, as a fraction of the bound: half a float16 ulp of
    each value plus the float32 roundings on the way (1e-6 of the value and of 1 for y,
    1e-5 of the largest |dx| for dx); against PyTorch's mixed-precision kernels
    (native_batch_norm with float32 parameters), in float16 ulps of the largest value
    (each library is within rounding of the exact value: at most 2 apart)."""
    worst = {}
    for shape in [(32, 16, 28, 28), (8, 64, 14, 14), (64, 256), (4, 8, 5, 6, 7)]:
        for layout in ("NCHW", "channels-last") if len(shape) > 2 else ("NCHW",):
            c = shape[1]
            x = (rng.standard_normal(shape) * 2 + rng.normal(size=(1, c) + (1,) * (len(shape) - 2))).astype(np.float16)
            dy = rng.standard_normal(shape).astype(np.float16)
            if layout == "channels-last":
                x, dy = channels_last(x), channels_last(dy)
            bn = MODULES[max(len(shape) - 2, 1)](c, dtype=np.float16)
            bn.gamma[...] = rng.uniform(0.5, 1.5, c)
            bn.beta[...] = rng.normal(size=c)
            bn.running_mean[...] = rng.normal(size=c)
            bn.running_var[...] = rng.uniform(0.5, 2.0, c)
            w, b = torch.from_numpy(bn.gamma.copy()), torch.from_numpy(bn.beta.copy())
            for training in (True, False):
                mean, var = (None, None) if training else (bn.running_mean.copy(), bn.running_var.copy())
                rm, rv = torch.from_numpy(bn.running_mean.copy()), torch.from_numpy(bn.running_var.copy())
                y, dx = bn.train(training)(x), bn.backward(dy)
                y_ref = ref.forward(x, bn.gamma, bn.beta, mean, var)
                dx_ref = ref.backward(dy, x, bn.gamma, mean, var, training=training)[0]
                xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
                yt, save_mean, save_invstd = torch.native_batch_norm(xt, w, b, rm, rv, training, 0.1, bn.eps)
                dxt = torch.ops.aten.native_batch_norm_backward(dyt, xt, w, rm, rv, save_mean, save_invstd,
                                                                training, bn.eps, [True, False, False])[0]
                bounds = {"y": 0.5 * float16_spacing(y_ref) + 1e-6 * (1 + np.abs(y_ref)),
                          "dx": 0.5 * float16_spacing(dx_ref) + 1e-5 * np.abs(dx_ref).max()}
                for quantity, got, exact, theirs in (("y", y, y_ref, yt), ("dx", dx, dx_ref, dxt)):
                    err = np.abs(got.astype(np.float64) - exact)
                    apart = np.abs(got.astype(np.float64) - theirs.numpy().astype(np.float64))
                    for key, value in ((("reference", quantity, layout), (err / bounds[quantity]).max()),
                                       (("torch", quantity, layout), apart.max() / float16_spacing(np.abs(exact).max()))):
                        worst[key] = max(worst.get(key, 0.0), float(value))
    for (against, quantity, layout), value in sorted(worst.items()):
        unit = "of the bound" if against == "reference" else "float16 ulp of the largest value"
        FIGURES.append(f"float16 largest error vs {against}: {quantity} ({layout}) {value:.3f} {unit}")
    for (against, quantity, layout), value in worst.items():
        assert value <= (1.0 if against == "reference" else 2.0), (against, quantity, layout, value)
