"""inspect.signature gives the real signature of each public callable, and the
defaults it shows are accepted by the code (called with them, by keyword)."""
import inspect

import numpy as np
import pytest

import bnorm
from bnorm import functional

MODULES = [bnorm.BatchNorm1d, bnorm.BatchNorm2d, bnorm.BatchNorm3d]
CONSTRUCTOR = ["num_features", "eps", "momentum", "affine", "track_running_stats", "dtype", "activation", "bias"]


@pytest.mark.parametrize("cls", MODULES)
def test_constructor_signature_lists_the_arguments(cls):
    params = inspect.signature(cls).parameters
    assert list(params) == CONSTRUCTOR
    assert params["bias"].kind is inspect.Parameter.KEYWORD_ONLY  # as in torch


@pytest.mark.parametrize("cls", MODULES)
def test_constructor_accepts_its_defaults_except_bias(cls):
    params = inspect.signature(cls).parameters
    kwargs = {n: p.default for n, p in params.items() if p.default is not p.empty and n != "bias"}
    bn = cls(4, **kwargs)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.dtype, bn.activation) == (
        1e-5, 0.1, True, True, np.float32, None)


def test_constructor_accepts_bias_default():
    bnorm.BatchNorm2d(4, bias=inspect.signature(bnorm.BatchNorm2d).parameters["bias"].default)


def test_methods():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    bn = bnorm.BatchNorm2d(3)
    assert str(inspect.signature(bn.forward)) == "(x, /, out=None)"
    assert str(inspect.signature(bn.backward)) == "(dy, /, out=None)"
    assert str(inspect.signature(bn.train)) == "(mode=True)"
    assert str(inspect.signature(bn.eval)) == "()"
    assert str(inspect.signature(bn.load_state_dict)).startswith("(state_dict")
    y = bn.forward(x, out=None)
    bn.backward(np.ones_like(y), out=None)
    bn.train(mode=True)


def test_functional_and_top_level():
    bn_sig = inspect.signature(functional.batch_norm)
    assert list(bn_sig.parameters) == ["x", "running_mean", "running_var", "weight", "bias", "training",
                                       "momentum", "eps", "out", "activation"]
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    defaults = {n: p.default for n, p in bn_sig.parameters.items() if p.default is not p.empty}
    # training=True: the default eval mode needs running statistics, which default to None
    y, mean, invstd = functional.batch_norm(x, **{**defaults, "training": True})
    bw_sig = inspect.signature(functional.batch_norm_backward)
    assert list(bw_sig.parameters) == ["dy", "x", "save_mean", "save_invstd", "weight", "training", "out",
                                       "bias", "activation"]
    defaults = {n: p.default for n, p in bw_sig.parameters.items() if p.default is not p.empty}
    functional.batch_norm_backward(y, x, mean, invstd, **defaults)
    for name in ["get_num_threads", "set_num_threads", "simd_level", "supported_simd_levels", "simd_path",
                 "supported_simd_paths", "show_config"]:
        inspect.signature(getattr(bnorm, name))  # raises ValueError without a signature


@pytest.mark.parametrize("cls", MODULES)
def test_call_has_forward_signature(cls):
    """bn(x) shows forward's signature (inspect, help(), Jupyter's `bn?`), not (*args, **kwargs)."""
    bn = cls(3)
    assert str(inspect.signature(bn.__call__)) == str(inspect.signature(bn.forward)) == "(x, /, out=None)"
    assert str(inspect.signature(cls.__call__)) == "(self, x, /, out=None)"
    # Still CPython's slot wrapper of tp_call (the C forward), so subclasses call it
    # directly; a __call__ defined as a method would add a lookup to every call.
    assert type(cls.__call__).__name__ == "wrapper_descriptor"
    x = np.random.default_rng(0).standard_normal((4, 3) + (2,) * (bn._ndim_range[0] - 2)).astype(np.float32)
    y = bn(x, out=None)  # the default the signature shows is accepted
    assert y.shape == x.shape and np.allclose(y.mean(axis=0 if x.ndim == 2 else (0, *range(2, x.ndim))), 0, atol=1e-6)
