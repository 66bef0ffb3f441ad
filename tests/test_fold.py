"""bn.fold: a convolution or linear layer followed by an eval-mode batch norm equals
the folded layer alone; and the folded weights equal PyTorch's fuse_conv_bn_eval."""
import numpy as np
import pytest

import bnorm


def trained(bn, rng, dims):
    """A module with non-trivial parameters and running statistics from real steps."""
    if bn.affine:
        bn.gamma[...] = rng.uniform(-2.0, 2.0, bn.num_features)
        bn.beta[...] = rng.uniform(-1.0, 1.0, bn.num_features)
    for _ in range(3):
        bn((rng.standard_normal((4, bn.num_features) + (5,) * dims) * 3.0 + 1.0).astype(bn.dtype))
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_folded_conv_equals_conv_then_batch_norm(torch, rng, affine, with_bias):
    bn = trained(bnorm.BatchNorm2d(6, affine=affine, dtype=np.float64), rng, 2)
    conv = torch.nn.Conv2d(3, 6, 3, bias=with_bias).double()
    x = torch.from_numpy(rng.standard_normal((2, 3, 8, 8)))
    with torch.no_grad():
        expected = bn(conv(x).numpy())
        bias = conv.bias.numpy() if with_bias else None
        weight, folded_bias = bn.fold(conv.weight.numpy(), bias)
        got = torch.nn.functional.conv2d(x, torch.from_numpy(weight), torch.from_numpy(folded_bias)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_fold_equals_torch_fuse_conv_bn_eval(torch, rng):
    bn = trained(bnorm.BatchNorm2d(6), rng, 2)
    conv = torch.nn.Conv2d(3, 6, 3).eval()
    tbn = torch.nn.BatchNorm2d(6).eval()
    tbn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in bn.state_dict().items()})
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, tbn)
    weight, bias = bn.fold(conv.weight.detach().numpy(), conv.bias.detach().numpy())
    assert weight.dtype == bias.dtype == np.float32
    # torch computes in float32, bnorm in float64: equal to float32 rounding
    np.testing.assert_allclose(weight, fused.weight.detach().numpy(), rtol=4e-7, atol=1e-7)
    np.testing.assert_allclose(bias, fused.bias.detach().numpy(), rtol=4e-6, atol=1e-6)


def test_folded_linear_equals_linear_then_batch_norm(rng):
    bn = trained(bnorm.BatchNorm1d(4, dtype=np.float64), rng, 0)
    weight, bias = rng.standard_normal((4, 7)), rng.standard_normal(4)
    x = rng.standard_normal((10, 7))
    folded_weight, folded_bias = bn.fold(weight, bias)
    np.testing.assert_allclose(x @ folded_weight.T + folded_bias, bn(x @ weight.T + bias), rtol=1e-12, atol=1e-12)


def test_fold_rejects_what_cannot_be_folded(rng):
    with pytest.raises(ValueError, match="track_running_stats=False"):
        bnorm.BatchNorm2d(3, track_running_stats=False).fold(np.ones((3, 2, 1, 1)))
    bn = bnorm.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"axis 0 must be the 3 output channels, got shape \(4, 2\)"):
        bn.fold(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), got \(2,\)"):
        bn.fold(np.ones((3, 2)), np.ones(2))
    with pytest.raises(TypeError, match="weight must be a float array, got dtype int64"):
        bn.fold(np.ones((3, 2), dtype=np.int64))
