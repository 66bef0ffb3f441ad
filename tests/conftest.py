"""Shared configuration and helpers of the bnorm test suite.

* Hypothesis profiles: "ci" (the default: derandomized, no deadline) and
  "dev" / "thorough"; choose one with HYPOTHESIS_PROFILE=...
* ``torch``: the PyTorch module.  A missing torch is a test *error*, never a
  skip, because the parity tests are the point of this suite in CI.
* ``reference``: bnorm.testing.reference, the float64 oracle.
* ``checks``: the error model every comparison uses (``error_bounds``,
  ``assert_close``) and ``check_step``, which runs one forward/backward of a
  bnorm module and compares it with the reference (and optionally PyTorch).

Helpers are handed out as fixtures rather than imported from this file,
which pytest does not support as a module.
"""

import dataclasses
import importlib.util
import math
import os
import pathlib
import types
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, derandomize=True, max_examples=60, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=20, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load_reference():
    """Load bnorm/testing/reference.py from its file.

    The oracle is pure NumPy, while ``import bnorm`` needs the compiled
    extension; loading the file directly lets the oracle be validated
    against PyTorch before (and independently of) any build.
    """
    path = ROOT / "bnorm" / "testing" / "reference.py"
    spec = importlib.util.spec_from_file_location("bnorm_reference_oracle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference_module = _load_reference()


def _run_python(code, **env):
    """Run `code` in a fresh interpreter that imports the bnorm these tests import.

    The child's working directory is the folder holding that bnorm package (the
    checkout for an in-place build, site-packages for an installed one): run from
    the checkout's root, `import bnorm` would find the source tree, which has no
    compiled extension when bnorm was installed with pip."""
    import subprocess
    import sys

    import bnorm

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(bnorm.__file__).resolve().parents[1], env={**os.environ, **env})


_FIGURE_MODULES = []


def pytest_collection_modifyitems(items):
    _FIGURE_MODULES.extend(dict.fromkeys(item.module for item in items if hasattr(item.module, "FIGURES")))


def pytest_terminal_summary(terminalreporter):
    """Print the figures (calls made, memory growth, times) that test modules append
    to their module-level FIGURES list."""
    for module in _FIGURE_MODULES:
        for line in module.FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def run_python():
    return _run_python


@pytest.fixture(scope="session")
def reference():
    return reference_module


@pytest.fixture(scope="session")
def torch():
    try:
        import torch
    except ImportError as exc:
        pytest.fail(f"PyTorch is required by the parity tests and must be installed in CI ({exc})",
                    pytrace=False)
    # Give torch the thread count bnorm uses, so that both run under the same conditions.
    try:
        import bnorm
    except ImportError:  # the oracle's own tests run before the extension is built
        pass
    else:
        torch.set_num_threads(bnorm.get_num_threads())
    return torch


@pytest.fixture
def rng(request):
    """A NumPy Generator seeded from the test's id: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ----------------------------------------------------------------------------
# The error model
# ----------------------------------------------------------------------------
#
# Every comparison is |actual - expected| <= tolerance with
#
#     tolerance = K * eps(dtype) * (rounding + sqrt(M) * accumulated)
#
# where, for each element of the compared quantity,
#   rounding     is the sum of magnitudes of the terms that are rounded a few
#                times on the way to the result (including the result itself),
#   accumulated  is the sum of magnitudes of the terms whose error comes from a
#                reduction over the M values of a channel (mean, variance,
#                sum(dy), sum(dy * x_hat)); blocked or pairwise summation
#                grows such an error like sqrt(M) (random-walk rounding),
# both derived below from the formulas, and
#   K = 8        headroom for the handful (< 8) of rounded operations each term
#                goes through; it is not tuned to any implementation.
#
# One term depends on how x - mean is formed.  bnorm keeps statistics in
# float64 and must not lose them to a float32 rounding of the mean: an input
# 1e4 + N(0, 1) must come out to ~1e-5 relative, so for bnorm x_hat
# is known to float64 precision relative to |x| ("bnorm" conditioning).  PyTorch
# folds the statistics into y = x * a + b in the input dtype, so its x_hat is
# only known to eps(dtype) * |x| * invstd ("torch" conditioning).

K = 8
EPS64 = np.finfo(np.float64).eps


@dataclasses.dataclass
class Bound:
    """Error model of one quantity: see the comment above."""
    rounding: np.ndarray
    accumulated: np.ndarray
    M: int

    def tolerance(self, dtype):
        eps = np.finfo(dtype).eps
        return K * eps * (self.rounding + math.sqrt(max(self.M, 1)) * self.accumulated)


def _channel(v, ndim):
    """(C,) -> (1, C, 1, ...) for broadcasting against an ndim input."""
    v = np.asarray(v, dtype=np.float64)
    return v.reshape((1, v.size) + (1,) * (ndim - 2))


@np.errstate(invalid="ignore", over="ignore", divide="ignore")  # NaN/inf inputs are tested on purpose
def error_bounds(x, *, dtype, eps, mean, var, batch, gamma=None, beta=None, dy=None,
                 running=None, conditioning="bnorm"):
    """Bounds for y, dx, dgamma, dbeta, running_mean and running_var of one step.

    ``mean``/``var`` are the statistics the step normalises with (batch or
    running), ``batch`` says whether they are x's batch statistics (so that
    they carry reduction error and the gradient flows through them), and
    ``running`` is ``(running_mean, running_var, m)`` before a training
    update with new-batch weight m, or None if the step updates nothing.
    """
    ref = reference_module
    x = np.asarray(x, dtype=np.float64)
    nd = x.ndim
    axes = (0,) + tuple(range(2, nd))
    C = x.shape[1]
    M = x.size // C if C else 0
    g = np.abs(_channel(np.ones(C) if gamma is None else gamma, nd))
    b = np.abs(_channel(np.zeros(C) if beta is None else beta, nd))
    invstd = _channel(1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps), nd)
    mean_b = _channel(mean, nd)
    x_hat = np.abs(x - mean_b) * invstd
    x_eps = EPS64 if conditioning == "bnorm" else np.finfo(dtype).eps
    x_hat_cond = x_hat + (x_eps / np.finfo(dtype).eps) * invstd * (np.abs(x) + np.abs(mean_b))
    reduction = M if batch else 1

    y = np.abs(ref.forward(x, gamma, beta, mean, var, eps))
    bounds = {"y": Bound(rounding=y + g * x_hat_cond + b,
                         accumulated=g * (1 + x_hat) if batch else np.zeros_like(x),
                         M=reduction)}
    if dy is not None:
        dy = np.abs(np.asarray(dy, dtype=np.float64))
        if batch:
            # dx = g*invstd*(dy - mean(dy) - x_hat*mean(dy*x_hat)); A bounds both means and
            # the error they inherit from x_hat's own error.
            A = (dy * (1 + x_hat)).mean(axis=axes, keepdims=True) if M else np.zeros_like(invstd)
            dx = Bound(rounding=g * invstd * (dy + A * (1 + x_hat_cond)),
                       accumulated=3 * g * invstd * A * (1 + x_hat), M=M)
        else:
            dx = Bound(rounding=g * invstd * dy, accumulated=np.zeros_like(x), M=1)
        bounds["dx"] = dx
        bounds["dgamma"] = Bound(rounding=(dy * x_hat_cond).sum(axis=axes),
                                 accumulated=(dy * (1 + x_hat)).sum(axis=axes), M=M)
        bounds["dbeta"] = Bound(rounding=np.zeros(C), accumulated=dy.sum(axis=axes), M=M)
    if running is not None and M > 1:
        rm, rv, m = (np.asarray(running[0], np.float64), np.asarray(running[1], np.float64),
                     float(running[2]))
        var = np.asarray(var, dtype=np.float64)
        unbiased = var * M / (M - 1)
        bounds["running_mean"] = Bound(rounding=(1 - m) * np.abs(rm) + m * np.abs(mean),
                                       accumulated=m * np.sqrt(var), M=M)
        bounds["running_var"] = Bound(rounding=(1 - m) * np.abs(rv) + m * unbiased,
                                      accumulated=m * unbiased, M=M)
    return bounds


@np.errstate(invalid="ignore", over="ignore")
def assert_close(actual, expected, tolerance, what=""):
    """Assert |actual - expected| <= tolerance elementwise; return (max error, max error/tolerance).

    Non-finite expected values must be matched exactly: NaN by NaN (a NaN must
    stay in its channel, and must not vanish either) and inf by the same inf.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    a = actual.astype(np.float64)
    nan = np.isnan(expected)
    assert np.isnan(a[nan]).all(), f"{what}: expected NaN at {np.argwhere(nan & ~np.isnan(a))[:5].tolist()}"
    inf = np.isinf(expected)
    assert (a[inf] == expected[inf]).all(), f"{what}: infinities differ"
    finite = np.isfinite(expected)
    tol = np.broadcast_to(np.asarray(tolerance, dtype=np.float64), expected.shape)
    err = np.abs(a - expected)
    bad = finite & ~(err <= tol)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err / np.where(tol > 0, tol, 1e-300), 0)),
                                 expected.shape)
        raise AssertionError(
            f"{what}: {bad.sum()} of {expected.size} elements outside tolerance; worst at {worst}: "
            f"got {a[worst]!r}, expected {expected[worst]!r}, |error| {err[worst]:.3e} > "
            f"tolerance {tol[worst]:.3e}")
    if not finite.any():
        return 0.0, 0.0
    ratio = err[finite] / np.maximum(tol[finite], np.finfo(np.float64).tiny)
    return float(err[finite].max()), float(ratio.max())


# ----------------------------------------------------------------------------
# One step of a module, against the reference (and optionally torch)
# ----------------------------------------------------------------------------

def reference_like(bn):
    """A ReferenceBatchNorm in the state of the bnorm module ``bn`` (float64 copies)."""
    ref = reference_module.ReferenceBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                              bn.track_running_stats)
    ref.training = bn.training
    if bn.affine:
        ref.gamma = bn.gamma.astype(np.float64)
        ref.beta = bn.beta.astype(np.float64)
    if bn.track_running_stats:
        ref.running_mean = bn.running_mean.astype(np.float64)
        ref.running_var = bn.running_var.astype(np.float64)
        ref.num_batches_tracked = bn.num_batches_tracked
    return ref


def is_channels_last(a):
    """Memory (N, *spatial, C) in C order, and not also plain C-contiguous."""
    return a.ndim >= 3 and not a.flags.c_contiguous and np.moveaxis(a, 1, -1).flags.c_contiguous


def assert_output_layout(out, x, what):
    """Outputs are C-contiguous, except that a channels-last input's output keeps
    that layout (as PyTorch's channels_last does)."""
    if is_channels_last(x):
        assert is_channels_last(out), f"{what} must keep the channels-last layout of the input"
    else:
        assert out.flags.c_contiguous, f"{what} must be C-contiguous"


def _check_new_array(arr, shape, dtype, what):
    assert isinstance(arr, np.ndarray), f"{what}: expected an ndarray, got {type(arr)}"
    assert arr.shape == shape, f"{what}: shape {arr.shape}, expected {shape}"
    assert arr.dtype == dtype, f"{what}: dtype {arr.dtype}, expected {dtype}"


def _sync_torch(tbn, bn, torch):
    """Give the torch module bnorm's running statistics, so that each step's check is per-step."""
    with torch.no_grad():
        if bn.track_running_stats:
            tbn.running_mean.copy_(torch.from_numpy(bn.running_mean.copy()))
            tbn.running_var.copy_(torch.from_numpy(bn.running_var.copy()))
            tbn.num_batches_tracked.fill_(bn.num_batches_tracked)
        tbn.train(bn.training)


def check_step(bn, x, dy, *, torch_bn=None):
    """Run bn(x) and bn.backward(dy); compare with the reference, or with torch_bn.

    The reference starts from the module's current state, so every step is
    checked on its own and errors do not compound across steps.  With
    ``torch_bn`` the expected values are PyTorch's (autograd) and the
    tolerance is the sum of PyTorch's and bnorm's bounds.  Returns
    {quantity: (max |error|, max |error|/tolerance)}.
    """
    dtype = bn.dtype
    C = bn.num_features
    M = x.size // x.shape[1]
    batch = bn.training or not bn.track_running_stats
    updates = bn.training and bn.track_running_stats
    ref = reference_like(bn)
    before = {k: getattr(bn, k).copy() for k in ("running_mean", "running_var")
              if bn.track_running_stats}

    if torch_bn is not None:
        import torch
        _sync_torch(torch_bn, bn, torch)

    if batch and M == 1:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            bn(x)
        with pytest.raises(ValueError):
            ref(x)
        if torch_bn is not None:
            with pytest.raises(ValueError):
                torch_bn(torch.from_numpy(np.ascontiguousarray(x)))
        return {}

    nbt_before = bn.num_batches_tracked if bn.track_running_stats else None
    y = bn(x)
    y_ref = ref(x)
    dx = bn.backward(dy)
    dx_ref = ref.backward(dy)
    _check_new_array(y, x.shape, dtype, "y")
    assert_output_layout(y, x, "y")
    _check_new_array(dx, x.shape, dtype, "dx")

    if batch:
        mean, var = reference_module.batch_stats(x)
    else:
        mean, var = before["running_mean"], before["running_var"]
    m = None
    if updates:
        m = bn.momentum if bn.momentum is not None else 1.0 / (nbt_before + 1)
    running = (before["running_mean"], before["running_var"], m) if updates else None

    expected = {"y": y_ref, "dx": dx_ref}
    if bn.affine:
        expected.update(dgamma=ref.grad_gamma, dbeta=ref.grad_beta)
    if updates and M > 0:
        expected.update(running_mean=ref.running_mean, running_var=ref.running_var)
    bounds = error_bounds(x, dtype=dtype, eps=bn.eps, mean=mean, var=var, batch=batch,
                          gamma=ref.gamma, beta=ref.beta, dy=dy, running=running)

    if torch_bn is not None:
        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        yt = torch_bn(xt)
        yt.backward(torch.from_numpy(np.ascontiguousarray(dy)))
        torch_values = {"y": yt.detach().numpy(), "dx": xt.grad.numpy()}
        if bn.affine:
            torch_values.update(dgamma=torch_bn.weight.grad.numpy(), dbeta=torch_bn.bias.grad.numpy())
            torch_bn.weight.grad = None
            torch_bn.bias.grad = None
        if updates and M > 0:
            torch_values.update(running_mean=torch_bn.running_mean.numpy(),
                                running_var=torch_bn.running_var.numpy())
        torch_bounds = error_bounds(x, dtype=dtype, eps=bn.eps, mean=mean, var=var, batch=batch,
                                    gamma=ref.gamma, beta=ref.beta, dy=dy, running=running,
                                    conditioning="torch")
        tolerances = {k: bounds[k].tolerance(dtype) + torch_bounds[k].tolerance(dtype)
                      for k in expected}
        expected = {k: torch_values[k] for k in expected}
        if bn.track_running_stats:
            assert int(torch_bn.num_batches_tracked) == ref.num_batches_tracked
    else:
        tolerances = {k: bounds[k].tolerance(dtype) for k in expected}

    actual = {"y": y, "dx": dx}
    if bn.affine:
        _check_new_array(bn.grad_gamma, (C,), dtype, "grad_gamma")
        _check_new_array(bn.grad_beta, (C,), dtype, "grad_beta")
        actual.update(dgamma=bn.grad_gamma, dbeta=bn.grad_beta)
    else:
        assert bn.grad_gamma is None and bn.grad_beta is None
    if bn.track_running_stats:
        assert bn.num_batches_tracked == ref.num_batches_tracked
        if updates and M > 0:
            actual.update(running_mean=bn.running_mean, running_var=bn.running_var)
        else:  # eval mode, or an empty batch: the running statistics must not move at all
            np.testing.assert_array_equal(bn.running_mean, before["running_mean"])
            np.testing.assert_array_equal(bn.running_var, before["running_var"])
    else:
        assert bn.running_mean is None and bn.running_var is None

    if M == 0 and bn.affine:  # nothing to sum: exactly zero, as torch gives
        np.testing.assert_array_equal(bn.grad_gamma, 0)
        np.testing.assert_array_equal(bn.grad_beta, 0)
    return {k: assert_close(actual[k], expected[k], tolerances[k], what=k) for k in expected}


def torch_like(bn, ndim):
    """A torch.nn.BatchNorm{1,2,3}d for ndim-D input with bn's options, parameters and state."""
    import torch
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}[ndim]
    tbn = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
              track_running_stats=bn.track_running_stats,
              dtype=torch.float64 if bn.dtype == np.float64 else torch.float32)
    with torch.no_grad():
        if bn.affine:
            tbn.weight.copy_(torch.from_numpy(np.array(bn.gamma)))
            tbn.bias.copy_(torch.from_numpy(np.array(bn.beta)))
    _sync_torch(tbn, bn, torch)
    return tbn


# ----------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------

def numerical_gradient(f, a):
    """Central-difference gradient of the scalar f() with respect to the float64 array a.

    a is perturbed in place, one element at a time, and restored.  The step
    h = eps**(1/3) * max(1, |a_i|) balances truncation error (~h**2) against
    rounding error (~eps/h), leaving an error of about eps**(2/3) ~ 4e-11 times
    the scale of the function's derivatives.
    """
    assert a.dtype == np.float64 and a.flags.writeable
    grad = np.empty_like(a)
    h0 = EPS64 ** (1 / 3)
    for i in np.ndindex(a.shape):
        orig = a[i]
        h = h0 * max(1.0, abs(orig))
        up, down = orig + h, orig - h
        a[i] = up
        f_up = f()
        a[i] = down
        f_down = f()
        a[i] = orig
        grad[i] = (f_up - f_down) / (up - down)  # the steps actually taken, after rounding
    return grad


def assert_gradient_close(analytic, numeric, what=""):
    """Analytic vs finite-difference gradient.

    The tolerance sqrt(eps) ~ 1.5e-8 relative to the gradient's scale is a few
    hundred times the eps**(2/3) accuracy of central differences on
    well-conditioned inputs, and far below the O(1) relative change that any
    wrong or missing term of a gradient formula causes.
    """
    analytic = np.asarray(analytic, dtype=np.float64)
    scale = 1.0 + np.abs(numeric).max(initial=0.0)
    return assert_close(analytic, numeric, math.sqrt(EPS64) * scale, what=what)


@pytest.fixture(scope="session")
def checks():
    """The helpers above, for the test modules."""
    return types.SimpleNamespace(K=K, Bound=Bound, error_bounds=error_bounds,
                                 assert_close=assert_close, check_step=check_step,
                                 reference_like=reference_like, torch_like=torch_like,
                                 numerical_gradient=numerical_gradient,
                                 assert_gradient_close=assert_gradient_close,
                                 assert_output_layout=assert_output_layout)
