"""The example of docs/testing.rst ("Testing your own batch norm with bnorm"), verbatim.

The code between the markers below is what that page shows (its first testcode
block); test_example_matches_the_docs fails when the two drift apart. The docs'
doctest build (.ci/docs) runs the page's copy too; this file runs it under pytest.
"""

import pathlib
import textwrap

# --- docs example begins ---
from typing import Any

import numpy as np
from hypothesis import given, settings
from numpy.typing import NDArray

from bnorm.testing import assert_batch_norm_close, gradcheck
from bnorm.testing import strategies as bst

Array = NDArray[Any]
Saved = tuple[Array, Array, Array, tuple[int, ...]]  # what backward needs


def my_batch_norm(x: Array, weight: Array, bias: Array, eps: float) -> tuple[Array, Saved]:
    """The kernel under test: training-mode batch norm in x's own precision.

    Returns y and what backward needs."""
    axes = (0,) + tuple(range(2, x.ndim))          # every axis but the channels
    shape = (1, -1) + (1,) * (x.ndim - 2)          # (C,) -> broadcastable
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)   # biased, like torch
    x_hat = (x - mean) / np.sqrt(var + x.dtype.type(eps))
    y = x_hat * weight.reshape(shape) + bias.reshape(shape)
    return y, (x_hat, var, weight.reshape(shape), axes)


def my_batch_norm_backward(dy: Array, saved: Saved, eps: float) -> tuple[Array, Array, Array]:
    x_hat, var, gamma, axes = saved
    M = x_hat.size // x_hat.shape[1]
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    shape = gamma.shape
    dx = gamma / np.sqrt(var + x_hat.dtype.type(eps)) * (
        dy - dbeta.reshape(shape) / M - x_hat * dgamma.reshape(shape) / M)
    return dx, dgamma, dbeta


@settings(max_examples=200, deadline=None)
@given(bst.problems(dims=(1, 2, 3), training=True, options=bst.module_options(affine=True)))
def test_my_batch_norm_matches_bnorm(p: bst.Problem) -> None:
    # p.x: input with nasty structure (offsets like 1e4 + noise, constant
    # channels, ties, outliers), p.dtype: float32 or float64, p.options: eps,
    # momentum, ...; p.state: gamma, beta, running stats; p.dy: a gradient.
    bn = p.bnorm_module()                  # bnorm.BatchNormNd with p's options and state
    y_expected = bn(p.x)                    # the oracle
    dx_expected = bn.backward(p.dy)

    y, saved = my_batch_norm(p.x, p.weight, p.bias, p.eps)
    dx, dgamma, dbeta = my_batch_norm_backward(p.dy, saved, p.eps)

    # Tolerances follow from the dtype, the number of values per channel and,
    # given x (and gamma), the problem's conditioning.
    tol: dict[str, Any] = dict(x=p.x, weight=p.weight, eps=p.eps)
    M = p.reduction_size
    assert_batch_norm_close(y, y_expected, p.dtype, M, what="output", **tol)
    assert_batch_norm_close(dx, dx_expected, p.dtype, M, what="grad_input", dy=p.dy, **tol)
    assert_batch_norm_close(dgamma, bn.grad_gamma, p.dtype, M, what="grad_weight", dy=p.dy, **tol)
    assert_batch_norm_close(dbeta, bn.grad_beta, p.dtype, M, what="grad_bias", dy=p.dy)


class MyBatchNorm:
    """My layer, in the shape gradcheck expects (forward, backward, gamma, beta, ...)."""

    dtype = np.dtype(np.float64)
    training = True

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        self.eps = eps
        self.gamma = np.ones(num_features)
        self.beta = np.zeros(num_features)

    def forward(self, x: Array) -> Array:
        y, self.saved = my_batch_norm(x, self.gamma, self.beta, self.eps)
        return y

    def backward(self, dy: Array) -> Array:
        dx, self.grad_gamma, self.grad_beta = my_batch_norm_backward(dy, self.saved, self.eps)
        return dx


@settings(max_examples=50, deadline=None)
@given(bst.problems(dims=2, dtypes=(np.float64,), training=True,
                    options=bst.module_options(affine=True)))
def test_my_backward_matches_finite_differences(p: bst.Problem) -> None:
    layer = MyBatchNorm(p.num_features, eps=p.eps)
    layer.gamma[...] = p.weight
    layer.beta[...] = p.bias
    gradcheck(layer, p.x)      # raises AssertionError naming the gradient and channel
# --- docs example ends ---


def test_example_matches_the_docs():
    here = pathlib.Path(__file__)
    ours = here.read_text().split("# --- docs example begins ---\n")[1].split("# --- docs example ends ---")[0]
    page = (here.parent.parent / "docs" / "testing.rst").read_text()
    block = page.split(".. testcode::\n\n", 1)[1]
    # The block ends at the first non-blank line that is not indented.
    lines = []
    for line in block.splitlines(keepends=True):
        if line.strip() and not line.startswith("   "):
            break
        lines.append(line)
    assert textwrap.dedent("".join(lines)).strip() == ours.strip()
