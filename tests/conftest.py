"""Shared configuration and helpers of the bnorm test suite.

* Hypothesis profiles: "ci" (the default: derandomized, no deadline) and
  "dev" / "thorough"; choose one with HYPOTHESIS_PROFILE=...
* ``torch``: the PyTorch module.  A missing torch is a test *error*, never a
  skip, because the parity tests are the point of this suite in CI.
* ``reference``: bnorm.testing.reference, the float64 oracle.
* ``checks``: ``Step``, which applies bnorm.testing's error model (the one
  every comparison uses) to one forward/backward step, and ``check_step``,
  which runs one step of a bnorm module and compares it with the reference
  (and optionally PyTorch).

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


def _load_testing_module(name):
    """Load bnorm/testing/<name>.py from its file.

    The oracle and the assertions are pure NumPy, while ``import bnorm`` needs
    the compiled extension; loading the files directly lets the oracle be
    validated against PyTorch before (and independently of) any build.
    """
    path = ROOT / "bnorm" / "testing" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bnorm_testing_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference_module = _load_testing_module("reference")


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
# The error model: bnorm.testing's (assert_batch_norm_close / batch_norm_tolerance)
# ----------------------------------------------------------------------------
#
# Every comparison is the toolkit's: |actual - expected| <= tol with
#
#     tol = eps(dtype) * (4 |expected| + 8 (1 + sqrt(M)) (1 + kappa_c) A_c)
#
# (docstring of bnorm.testing.assert_batch_norm_close: A_c is the natural
# magnitude of the quantity in channel c, kappa_c = max|x_c| / sqrt(var_c + eps)
# the condition number of the input it is given).  What a step adds is which M
# and which input the toolkit is told about:
#
# * M is the number of values a quantity is reduced over: the channel's M for
#   everything computed from batch statistics and for the per-channel sums and
#   statistics, 0 for y and dx in eval mode (running statistics are constants,
#   nothing is reduced);
# * "float64" conditioning (bnorm): bnorm keeps statistics in float64 and must not
#   lose them to a rounding of x - mean in the input dtype: an input 1e4 + N(0, 1)
#   in float32 must come out as accurately as N(0, 1).  So for a float32 or float16
#   input bnorm's error is bounded by the toolkit's tolerance for the centred
#   problem x - mean (the statistics the step normalises with), whose kappa is
#   max |x_hat|, not max |x| / s; y is given no x at all (kappa 0: its toolkit
#   scale, max |y| per channel, needs none, and the centred kappa would only
#   loosen it).  The float64 rounding of the mean still moves x_hat by
#   eps64 * |x| / s: negligible beside eps(float32), but for a float64 input it
#   is the input's own conditioning, so there x itself is given.
# * "input" conditioning (PyTorch): torch folds the statistics into
#   y = x * a + b in the input dtype, so it is given x itself (kappa grows with
#   the offset).
# * dx in eval mode is dy * gamma * invstd: x plays no part, none is given.

assertions_module = _load_testing_module("assertions")


@dataclasses.dataclass(frozen=True)
class Step:
    """One forward/backward step, as the error model needs to know it.

    ``mean`` is the per-channel mean the step normalises with (the batch's or the
    running one), ``batch`` whether those are x's batch statistics, ``weight`` gamma
    (None: 1), ``dy`` the upstream gradient, ``conditioning`` "float64" (bnorm) or
    "input" (PyTorch), see above.
    """
    x: np.ndarray
    dtype: np.dtype
    eps: float
    mean: np.ndarray
    batch: bool
    weight: np.ndarray = None
    dy: np.ndarray = None
    conditioning: str = "float64"

    @np.errstate(invalid="ignore", over="ignore")  # NaN/inf inputs are tested on purpose
    def _arguments(self, what):
        x = np.asarray(self.x, dtype=np.float64)
        C = x.shape[1]
        reduced = self.batch or what not in ("y", "dx")
        if what == "dx" and not self.batch:
            x = None  # dx = dy * gamma * invstd: x plays no part
        elif self.conditioning == "float64" and np.finfo(self.dtype).eps > np.finfo(np.float64).eps:
            if what == "y":
                x = None  # the centred problem's kappa would only loosen y: its scale needs no x
            else:
                x = x - np.asarray(self.mean, dtype=np.float64).reshape((1, C) + (1,) * (x.ndim - 2))
        return {"reduction_size": (self.x.size // C if C else 0) if reduced else 0, "what": what, "x": x,
                "dy": self.dy, "weight": self.weight, "eps": self.eps}

    def tolerance(self, expected, what):
        """The toolkit's per-element tolerance of quantity ``what`` (y, dx, dgamma, dbeta,
        running_mean, running_var, save_mean, save_invstd)."""
        return assertions_module.batch_norm_tolerance(expected, self.dtype, **self._arguments(what))[0]

    def assert_close(self, actual, expected, what, label=None):
        """assert_batch_norm_close for quantity ``what`` (failures name ``label``, default
        ``what``); returns (max |error|, max |error| / tolerance) over the finite elements.
        Dtypes are not compared here (the callers check them)."""
        assertions_module.assert_batch_norm_close(actual, expected, self.dtype, check_dtype=False,
                                                  err_msg=label or what, **self._arguments(what))
        return error_ratio(actual, expected, self.tolerance(expected, what))


@np.errstate(invalid="ignore", over="ignore")
def error_ratio(actual, expected, tolerance):
    """(max |actual - expected|, max |actual - expected| / tolerance) over the finite elements."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    finite = np.isfinite(a) & np.isfinite(e)
    if not finite.any():
        return 0.0, 0.0
    err = np.abs(a - e)[finite]
    tol = np.broadcast_to(tolerance, e.shape)[finite]
    return float(err.max()), float((err / np.maximum(tol, np.finfo(np.float64).tiny)).max())


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
    checked on its own and errors do not compound across steps.  bnorm's results
    must be within the toolkit's tolerance ("float64" conditioning) of the float64
    reference; with ``torch_bn`` PyTorch's (autograd) must also be within its own
    ("input" conditioning), which bounds |bnorm - torch| by the sum of the two.
    Returns {quantity: (max |error|, max |error|/tolerance)}: bnorm against the
    reference, or with ``torch_bn`` bnorm against torch relative to that sum.
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

    y = bn(x)
    y_ref = ref(x)
    dx = bn.backward(dy)
    dx_ref = ref.backward(dy)
    _check_new_array(y, x.shape, dtype, "y")
    assert_output_layout(y, x, "y")
    _check_new_array(dx, x.shape, dtype, "dx")

    mean = reference_module.batch_stats(x)[0] if batch else before["running_mean"]
    step = Step(x, dtype, bn.eps, mean, batch, weight=ref.gamma, dy=dy)

    expected = {"y": y_ref, "dx": dx_ref}
    if bn.affine:
        expected.update(dgamma=ref.grad_gamma, dbeta=ref.grad_beta)
    if updates and M > 0:
        expected.update(running_mean=ref.running_mean, running_var=ref.running_var)

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
        torch_step = dataclasses.replace(step, conditioning="input")
        for k in expected:
            torch_step.assert_close(torch_values[k], expected[k], k, f"torch {k}")
        if bn.track_running_stats:
            assert int(torch_bn.num_batches_tracked) == ref.num_batches_tracked

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
    errors = {k: step.assert_close(actual[k], expected[k], k) for k in expected}
    if torch_bn is None:
        return errors
    return {k: error_ratio(actual[k], torch_values[k],
                           step.tolerance(expected[k], k) + torch_step.tolerance(expected[k], k))
            for k in expected}


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

EPS64 = np.finfo(np.float64).eps


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
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=math.sqrt(EPS64) * scale, err_msg=what)


@pytest.fixture(scope="session")
def checks():
    """The helpers above, for the test modules."""
    return types.SimpleNamespace(Step=Step, error_ratio=error_ratio, check_step=check_step,
                                 reference_like=reference_like, torch_like=torch_like,
                                 numerical_gradient=numerical_gradient,
                                 assert_gradient_close=assert_gradient_close,
                                 assert_output_layout=assert_output_layout)
