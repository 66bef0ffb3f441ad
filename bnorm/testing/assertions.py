"""Assertions for testing batch-norm implementations against an oracle.

``assert_batch_norm_close`` compares a result (the output, a gradient, running
statistics...) with the expected one, using tolerances derived from the
dtype's machine epsilon and the number of values reduced per channel, and
reports the worst element when they differ.  ``gradcheck`` checks a module's
``backward`` against central finite differences of its ``forward``.

Both are pure NumPy; neither needs torch, hypothesis or bnorm's extension.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, TypedDict

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = ["assert_batch_norm_close", "batch_norm_tolerance", "gradcheck"]

# Constants of the tolerance formula (see assert_batch_norm_close).
_REL = 4.0   # ulps of |expected| for the final roundings of a few flops
_ABS = 8.0   # multiplies eps * (1 + sqrt(M)) * (1 + kappa) * scale

_KINDS = {
    "output": "output", "y": "output",
    "grad_input": "grad_input", "dx": "grad_input",
    "grad_weight": "grad_weight", "grad_gamma": "grad_weight", "dgamma": "grad_weight",
    "grad_bias": "grad_bias", "grad_beta": "grad_bias", "dbeta": "grad_bias",
    "running_mean": "mean", "mean": "mean", "save_mean": "mean",
    "running_var": "var", "var": "var",
    "invstd": "invstd", "save_invstd": "invstd",
}
_PER_ELEMENT = ("output", "grad_input")


class ToleranceInfo(TypedDict):
    """The pieces of the tolerance formula, as batch_norm_tolerance returns them."""

    eps: float
    M: int
    growth: float
    scale: NDArray[np.float64]
    kappa: NDArray[np.float64]
    extra: NDArray[np.float64]
    kind: str


class Differentiable(Protocol):
    """What gradcheck needs of a module (it reads eps, gamma, beta, training, dtype and the
    running statistics with getattr, and uses state_dict / load_state_dict when present)."""

    def forward(self, x: NDArray[np.float64], /) -> object: ...

    def backward(self, dy: NDArray[np.float64], /) -> object: ...


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _float_dtype(dtype: npt.DTypeLike) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected a floating dtype such as np.float32, got {dtype!r}") from exc
    if dt.kind != "f":
        raise TypeError(f"dtype: expected a floating dtype such as np.float32, got {dt}")
    return dt


def _channel_axes(a: NDArray[Any]) -> tuple[int, ...]:
    """Reduction axes of an (N, C, ...) array: all but axis 1."""
    return (0,) + tuple(range(2, a.ndim))


def _per_channel(v: npt.ArrayLike, ndim: int) -> NDArray[Any]:
    """Shape a (C,) vector to broadcast against an (N, C, ...) array of rank ndim."""
    shape = [1] * ndim
    shape[1] = -1
    return np.asarray(v).reshape(shape)


def _channel_max(a: NDArray[Any]) -> NDArray[Any]:
    """max |a| per channel (axis 1 for ndim >= 2, the vector itself for ndim 1), NaN-free."""
    a = np.abs(np.where(np.isfinite(a), a, 0.0))
    if a.ndim >= 2:
        if a.size == 0:
            return np.zeros(a.shape[1])
        channel_max: NDArray[Any] = a.max(axis=_channel_axes(a))
        return channel_max
    return a


def _x_statistics(x: npt.ArrayLike, bn_eps: float) -> tuple[
        NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """float64 views of x with its per-channel mean, s = sqrt(var + eps) and max |x|."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x: expected an (N, C, ...) array, got shape {x.shape}")
    axes = _channel_axes(x)
    finite = np.where(np.isfinite(x), x, 0.0)
    C = x.shape[1]
    M = x.size // C if C else 0
    if M == 0:
        zeros = np.zeros(C)
        return x, zeros, np.full(C, math.sqrt(bn_eps)), zeros, zeros
    mean = finite.mean(axis=axes)
    var = ((finite - _per_channel(mean, x.ndim)) ** 2).mean(axis=axes)
    s = np.sqrt(var + bn_eps)
    absx = np.abs(finite)
    return x, mean, s, absx.max(axis=axes), absx.mean(axis=axes)


def _fmt_index(idx: tuple[int, ...]) -> str:
    if len(idx) == 1:
        return f"[{idx[0]}]"
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


def _first_index(mask: NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


# ----------------------------------------------------------------------------
# tolerance
# ----------------------------------------------------------------------------

def batch_norm_tolerance(expected: npt.ArrayLike, dtype: npt.DTypeLike, reduction_size: int | None = None, *,
                         what: str = "output", x: npt.ArrayLike | None = None,
                         dy: npt.ArrayLike | None = None, weight: npt.ArrayLike | None = None,
                         eps: float = 1e-5) -> tuple[NDArray[np.float64], ToleranceInfo]:
    """Per-element tolerance used by :func:`assert_batch_norm_close`.

    Returns ``(tol, info)``: ``tol`` is a float64 array of expected's shape,
    ``info`` a dict with the pieces of the formula (for error messages):
    ``eps`` (machine epsilon), ``M``, ``growth`` = 1 + sqrt(M), and the
    per-channel ``scale`` and ``kappa`` arrays.  See assert_batch_norm_close
    for the formula and its derivation.
    """
    dt = _float_dtype(dtype)
    kind = _KINDS.get(what)
    if kind is None:
        raise ValueError(f"what: expected one of {sorted(_KINDS)}, got {what!r}")
    e = np.asarray(expected, dtype=np.float64)
    if kind in _PER_ELEMENT and e.ndim < 2:
        raise ValueError(f"{what}: expected an (N, C, ...) array, got shape {e.shape}")
    if kind not in _PER_ELEMENT and e.ndim != 1:
        raise ValueError(f"{what}: expected a per-channel (C,) array, got shape {e.shape}")
    C = e.shape[1] if e.ndim >= 2 else e.shape[0]

    if x is not None:
        x, x_mean, s, x_max, x_absmean = _x_statistics(x, eps)
        if x.shape[1] != C or (kind in _PER_ELEMENT and x.shape != e.shape):
            raise ValueError(f"x shape {x.shape} does not match {what} shape {e.shape}")
    if reduction_size is None:
        if x is not None:
            reduction_size = x.size // C if C else 0
        elif e.ndim >= 2:
            reduction_size = e.size // C if C else 0
        else:
            raise ValueError(f"{what}: give reduction_size (values per channel, N * prod(spatial)) "
                             "or x for per-channel quantities")
    M = int(reduction_size)
    if M < 0:
        raise ValueError(f"reduction_size must be >= 0, got {reduction_size}")
    if dy is not None:
        dy = np.asarray(dy, dtype=np.float64)
        if dy.ndim < 2 or dy.shape[1] != C:
            raise ValueError(f"dy shape {dy.shape} does not match {what} shape {e.shape}")
    gamma: NDArray[np.float64] | None = None
    if weight is not None:
        gamma = np.abs(np.asarray(weight, dtype=np.float64)).reshape(-1)
        if gamma.shape != (C,):
            raise ValueError(f"weight: expected shape ({C},), got {gamma.shape}")

    meps = float(np.finfo(dt).eps)
    growth = 1.0 + math.sqrt(M)
    abs_e = np.abs(np.where(np.isfinite(e), e, 0.0))
    S = _channel_max(e)                       # per-channel magnitude of the result
    S_all = float(S.max()) if S.size else 0.0
    kappa = np.zeros(C)
    extra = np.zeros(C)                       # second-order (absolute) terms
    if x is not None:
        kappa = x_max / s

    if kind == "output":
        scale = np.maximum(S, gamma if gamma is not None else np.ones(C))
    elif kind == "grad_input":
        scale = S.copy()
        if x is not None and dy is not None:
            g = gamma if gamma is not None else np.ones(C)
            scale = np.maximum(scale, g / s * _channel_max(dy))
    elif kind == "grad_weight":
        if x is not None and dy is not None:
            xhat = (x - _per_channel(x_mean, x.ndim)) / _per_channel(s, x.ndim)
            dy_abs = np.abs(np.where(np.isfinite(dy), dy, 0.0))
            term = dy_abs * (1.0 + np.abs(np.where(np.isfinite(xhat), xhat, 0.0)))
            scale = np.maximum(S, term.sum(axis=_channel_axes(x)))
        else:
            scale = np.full(C, S_all)
    elif kind == "grad_bias":
        kappa = np.zeros(C)
        if dy is not None:
            scale = np.maximum(S, np.abs(np.where(np.isfinite(dy), dy, 0.0)).sum(axis=_channel_axes(dy)))
        else:
            scale = np.full(C, S_all)
    elif kind == "mean":
        kappa = np.zeros(C)
        scale = np.maximum(S, x_absmean) if x is not None else np.full(C, S_all)
    else:  # var, invstd: relative quantities; the mean's rounding enters squared
        kappa = np.zeros(C)
        scale = S.copy()
        if x is not None:
            # Worst-case error of a computed mean: a sequential sum of a constant
            # channel errs systematically, linearly in M, not like sqrt(M).
            dmean = meps * (1.0 + M) * x_max
            if kind == "var":
                extra = _ABS * dmean ** 2
            else:  # invstd = (v + eps)^-1/2: d invstd = invstd^3 dv / 2
                extra = _ABS * dmean ** 2 / s ** 3

    # Underflow: results in the subnormal range carry an absolute error of up
    # to the smallest normal number per operation.
    underflow = _ABS * (1.0 + M) * float(np.finfo(dt).tiny)
    atol_c = _ABS * meps * growth * (1.0 + kappa) * scale + extra + underflow
    if e.ndim >= 2:
        atol = _per_channel(atol_c, e.ndim)
    else:
        atol = atol_c
    tol = _REL * meps * abs_e + atol
    info: ToleranceInfo = {"eps": meps, "M": M, "growth": growth, "scale": scale, "kappa": kappa, "extra": extra,
            "kind": kind}
    return np.broadcast_to(tol, e.shape), info


# ----------------------------------------------------------------------------
# assert_batch_norm_close
# ----------------------------------------------------------------------------

def assert_batch_norm_close(actual: npt.ArrayLike, expected: npt.ArrayLike, dtype: npt.DTypeLike,
                            reduction_size: int | None = None, *, what: str = "output",
                            x: npt.ArrayLike | None = None, dy: npt.ArrayLike | None = None,
                            weight: npt.ArrayLike | None = None, eps: float = 1e-5,
                            rtol: float | None = None, atol: float | None = None,
                            check_dtype: bool = True, err_msg: str = "") -> None:
    """Assert that a batch-norm result is as close to the expected one as rounding allows.

    Parameters
    ----------
    actual
        The result under test (e.g. your kernel's output), an array.
    expected
        The exact-as-possible answer, e.g. from ``bnorm.testing.reference``
        (float64) or from bnorm itself.
    dtype
        The precision ``actual`` was computed in (np.float32 or np.float64);
        its machine epsilon sets the tolerance.  With ``check_dtype`` (the
        default) an ndarray ``actual`` must also have this dtype.
    reduction_size
        M, the number of values per channel (N * prod(spatial)).  Inferred
        from ``x`` or from an (N, C, ...) ``expected`` when None; required
        for per-channel results unless ``x`` is given.
    what
        What is compared, which picks the error model: ``"output"`` (y),
        ``"grad_input"`` (dx), ``"grad_weight"`` (dgamma), ``"grad_bias"``
        (dbeta), ``"running_mean"``/``"mean"``, ``"running_var"``/``"var"``,
        ``"invstd"``.  Also used in the failure message.
    x, dy, weight, eps
        Optional: the forward input, the upstream gradient, gamma and the
        module's eps.  They make the tolerance aware of the problem's
        conditioning (see below).  Without them the tolerance assumes
        well-conditioned data: channel means within a few standard deviations
        of zero.  Pass at least ``x`` (and ``weight`` for an affine module)
        when inputs have large offsets such as 1e4 + noise, near-constant
        channels, or when your implementation, like PyTorch's, computes in
        the input precision.
    rtol, atol
        Override the derived relative / absolute tolerance (scalars).
    err_msg
        Prepended to the failure message.

    Tolerance
    ---------
    Element i (in channel c) passes when ``|actual - expected| <= tol_i``::

        tol_i = eps * (4 * |expected_i|  +  8 * (1 + sqrt(M)) * (1 + kappa_c) * A_c)

    where eps is ``np.finfo(dtype).eps`` (1.19e-7 for float32, 2.2e-16 for
    float64), M the reduction size, A_c the natural magnitude of the result
    in channel c and kappa_c a condition number (0 unless ``x`` is given).

    Derivation.  A batch norm is a few flops per element after two
    per-channel reductions (mean, variance; for backward sum(dy) and
    sum(dy * x_hat)).

    * The final flops (subtract, scale, shift, round to dtype) each add at
      most half an ulp: the ``4 * eps * |expected|`` term.
    * A reduction of M terms computed in the dtype has an error bounded by
      ``lambda * sqrt(M) * u * sum|terms|`` with high probability (Higham and
      Mary, "A new approach to probabilistic rounding error analysis", SIAM
      J. Sci. Comput. 2019; u = eps/2, failure probability below
      2 exp(-lambda^2 / 2)).  sqrt(M) covers a naive sequential float32
      loop; pairwise (NumPy), blocked, or double accumulation (bnorm,
      PyTorch CPU) are much better.  ``1 + sqrt(M)`` keeps the bound
      non-zero at M = 0 or 1.  The constant 8 (lambda = 16, counting the
      two reductions and the flops between them) was checked on thousands
      of generated problems: PyTorch's CPU kernels and a sequential-loop
      implementation in float32 and float64 stay below about 0.8 of the
      tolerance, bnorm below 0.2 (structured data, e.g. integers with many
      ties, make sequential rounding errors correlated and grow faster than
      sqrt(M), hence the margin).
    * Those reduction errors reach the result relative to its natural
      magnitude A_c, not to each element, since they shift a whole channel
      and can dominate elements that are near zero by cancellation:
        - output: A_c = max(max_i |y_ic|, |gamma_c|), with gamma_c = 1 when
          ``weight`` is not given.  Normalized outputs are O(1), about
          |gamma_c| times a few, so this is an absolute tolerance of the
          right size; the |gamma_c| floor matters for near-constant channels
          (var << eps), whose outputs are tiny but whose errors are not;
        - grad_input: max_i |dx_ic|, at least |gamma_c| / s_c * max|dy_c|;
        - grad_weight: sum |dy| * (1 + |x_hat|) with ``x`` and ``dy``, else the
          largest |dgamma| of any channel;  grad_bias: sum |dy| with ``dy``,
          else the largest |dbeta|;
        - mean/running_mean: mean |x| with ``x``, else the largest |value|;
        - var/running_var/invstd: |value| itself (a centred variance has a
          relative error), plus, with ``x``, 8 times the square of a mean's
          possible error ``eps * (1 + M) * max|x|`` (a rounded mean adds
          delta^2 to the variance, which is all the error of a constant
          channel's variance; M, not sqrt(M): a sequential sum of equal values
          errs systematically).
    * Underflow: ``8 * (1 + M) * np.finfo(dtype).tiny`` is added, for
      results in the subnormal range (e.g. the variance of values near 1e-38
      in float32).
    * Conditioning.  The output is (x - mean) * invstd: an error delta in the
      mean, or the rounding of x itself in y = x * a + b as PyTorch computes
      it, moves y by |gamma| * delta / s with s = sqrt(var + eps).  Both are
      proportional to |x|, so relative to the output scale they are
      amplified by ``kappa_c = max_i |x_ic| / s_c``: about 3 for centred
      data, 1e4 for 1e4 + N(0, 1).  No implementation that rounds x can do
      better, so for output, grad_input and grad_weight the tolerance is
      multiplied by ``1 + kappa_c`` when ``x`` is given.

    Bugs of semantics are far outside this: a variance computed unbiased
    changes y by a relative 1/(2M), ``eps`` outside the square root by
    eps / (2 var), E[x^2] - E[x]^2 in float32 errs by eps * mean^2 / var
    relative, i.e. kappa^2 instead of kappa, and a swapped momentum is an O(1)
    error.  (Only the first is invisible for very large M in float32: then
    float32 itself cannot resolve the difference.)

    NaN positions must be the same in ``actual`` and ``expected``, and
    infinities must match exactly.  The message of the AssertionError names
    the number of failing elements, the worst one (largest error/tolerance):
    its index, channel, both values, the difference and the tolerance, and
    the terms of the formula there.
    """
    dt = _float_dtype(dtype)
    prefix = f"{err_msg}\n" if err_msg else ""
    if check_dtype and isinstance(actual, np.ndarray) and actual.dtype != dt:
        raise AssertionError(f"{prefix}bnorm.testing: {what} has dtype {actual.dtype}, expected {dt}")
    a = np.asarray(actual)
    if a.dtype.kind not in "fiub":
        raise AssertionError(f"{prefix}bnorm.testing: {what} is not a real array (dtype {a.dtype})")
    a = a.astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{prefix}bnorm.testing: {what} has shape {a.shape}, expected {e.shape}")

    tol, info = batch_norm_tolerance(e, dt, reduction_size, what=what, x=x, dy=dy, weight=weight,
                                     eps=eps)
    if rtol is not None or atol is not None:
        r = _REL * info["eps"] if rtol is None else float(rtol)
        if atol is None:
            tol = tol - _REL * info["eps"] * np.abs(np.where(np.isfinite(e), e, 0.0)) + r * np.abs(e)
        else:
            tol = float(atol) + r * np.abs(np.where(np.isfinite(e), e, 0.0))
        tol = np.broadcast_to(tol, e.shape)

    def channel_of(idx: tuple[int, ...]) -> int:
        return idx[1] if e.ndim >= 2 else idx[0]

    # NaN and inf positions.
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        only_a = nan_a & ~nan_e
        only_e = nan_e & ~nan_a
        idx = _first_index(only_a | only_e)
        raise AssertionError(
            f"{prefix}bnorm.testing: {what}: NaN positions differ: {int(only_a.sum())} NaN in actual "
            f"but not in expected, {int(only_e.sum())} NaN in expected but not in actual; first at index "
            f"{_fmt_index(idx)} (channel {channel_of(idx)}): actual {float(a[idx])!r}, "
            f"expected {float(e[idx])!r}")
    inf_mismatch = (np.isinf(a) | np.isinf(e)) & (a != e) & ~nan_e
    if inf_mismatch.any():
        idx = _first_index(inf_mismatch)
        raise AssertionError(
            f"{prefix}bnorm.testing: {what}: infinities differ at {int(inf_mismatch.sum())} positions; "
            f"first at index {_fmt_index(idx)} (channel {channel_of(idx)}): actual {float(a[idx])!r}, "
            f"expected {float(e[idx])!r}")

    finite = np.isfinite(a) & np.isfinite(e)
    diff = np.abs(np.where(finite, a, 0.0) - np.where(finite, e, 0.0))
    bad = diff > tol
    if not bad.any():
        return
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bad, diff / tol, 0.0)
    ratio = np.where(bad & (tol == 0), np.inf, ratio)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), e.shape))
    c = channel_of(idx)
    n_bad, n = int(bad.sum()), e.size
    formula = (f"eps * ({_REL:g} * |expected| + {_ABS:g} * (1 + sqrt(M)) * (1 + kappa) * scale)"
               if rtol is None and atol is None else "overridden by rtol/atol")
    terms = (f"eps = {info['eps']:.3g} ({dt}), M = {info['M']}, 1 + sqrt(M) = {info['growth']:.4g}, "
             f"kappa = {info['kappa'][c]:.4g}, scale = {info['scale'][c]:.4g}")
    if info["extra"][c]:
        terms += f", + second-order term {info['extra'][c]:.3g}"
    raise AssertionError(
        f"{prefix}bnorm.testing: {what} is not close to the expected value ({dt}, "
        f"{info['M']} values per channel):\n"
        f"  {n_bad} of {n} elements ({100.0 * n_bad / n:.3g}%) exceed the tolerance\n"
        f"  worst at index {_fmt_index(idx)} (channel {c}): actual {float(a[idx])!r}, "
        f"expected {float(e[idx])!r}, "
        f"|difference| {diff[idx]:.6g} > tolerance {tol[idx]:.6g} ({ratio[idx]:.4g} times)\n"
        f"  tolerance there = {formula}\n"
        f"    with {terms}")


# ----------------------------------------------------------------------------
# gradcheck
# ----------------------------------------------------------------------------

def _snapshot(module: object) -> tuple[str, dict[str, Any]]:
    """Everything a forward may change (running statistics, num_batches_tracked)."""
    if hasattr(module, "state_dict") and hasattr(module, "load_state_dict"):
        return ("state_dict", module.state_dict())
    saved: dict[str, Any] = {}
    for name in ("running_mean", "running_var"):
        value = getattr(module, name, None)
        saved[name] = None if value is None else np.array(value, copy=True)
    saved["num_batches_tracked"] = getattr(module, "num_batches_tracked", None)
    return ("attributes", saved)


def _restore(module: object, snapshot: tuple[str, dict[str, Any]]) -> None:
    how, saved = snapshot
    if how == "state_dict" and hasattr(module, "load_state_dict"):  # as _snapshot checked
        module.load_state_dict(saved)
        return
    for name, value in saved.items():
        if value is not None:
            setattr(module, name, value.copy() if isinstance(value, np.ndarray) else value)


def gradcheck(module: Differentiable, x: NDArray[np.float64], *, eps: float | None = None,
              atol: float | None = None, rtol: float | None = None, n_probes: int = 3,
              dy: npt.ArrayLike | None = None, seed: int | None = 0) -> bool:
    """Check ``module.backward`` against central finite differences of ``module.forward``.

    With L(x, gamma, beta) = sum(dy * forward(x)) for a fixed random ``dy``,
    ``backward(dy)`` must return dL/dx and set ``grad_gamma`` = dL/dgamma and
    ``grad_beta`` = dL/dbeta.

    dx: for each of ``n_probes`` random directions v (Gaussian, scaled per
    channel by s_c = sqrt(var_c + module.eps) so that a step moves x_hat by
    about ``eps``), the change of L is compared with the directional
    derivative, *per channel* (the channels of a batch norm are independent,
    so L is a sum of per-channel terms and one pair of forwards checks every
    channel separately)::

        sum_c(dy * (forward(x + t v) - forward(x - t v)))  ~  sum_c(dx * 2 t v)

    This covers every element of dx at the cost of a few forwards per probe
    (a wrong dx is missed only if its error is orthogonal to all the random
    directions, which has probability zero).  Steps t = eps and 2 eps are
    combined by Richardson extrapolation, which cancels the O(t^3) truncation
    error of central differences, and the representable steps
    ``(x + t v) - (x - t v)`` are used instead of ``2 t v``, so inputs with
    large offsets lose nothing to the rounding of x + t v.

    dgamma, dbeta (affine modules): L is linear in gamma and beta, so one
    central difference per parameter, perturbing ``module.gamma`` /
    ``module.beta`` in place, checks every channel's gradient exactly up to
    rounding.

    Works in training mode (batch statistics: the gradient flows through
    mean and variance) and in eval mode (running statistics are constants).
    The module's running statistics, ``num_batches_tracked``, gamma and beta
    are restored afterwards (with state_dict / load_state_dict when the
    module has them); its training flag is not changed.  Its saved forward
    state and grad_gamma / grad_beta are left as the checks set them.

    Parameters
    ----------
    module
        A float64 module with ``forward``, ``backward`` and bnorm's
        attributes (bnorm.BatchNorm*d(..., dtype=np.float64),
        ReferenceBatchNorm, or your own).  A module of another dtype is
        rejected with TypeError: finite differences need float64.
    x
        float64 input array (N, C, ...), finite.
    eps
        Finite-difference step, relative to each channel's spread (default
        1e-3; the extrapolated truncation error is O(eps^4)).
    atol, rtol
        Channel c passes when ``|analytic_c - numeric_c| <= atol + rtol *
        scale_c + rounding_c``, where scale_c is the sum of the absolute
        terms of both sides and rounding_c bounds the rounding error of the
        forwards (a few ulps of |y| plus the error of a computed mean,
        eps_machine * (1 + sqrt(M)) * (1 + kappa_c) * |gamma_c|, as in
        assert_batch_norm_close).  Defaults: atol 0, rtol 1e-6.  A correct
        float64 module is typically within 1e-9 relative; a wrong gradient
        is off by O(1 / sqrt(M)) relative or more.
    n_probes
        Number of random directions for dx.
    dy
        Upstream gradient; default a seeded standard normal array.
    seed
        Seed for dy and the directions.

    Returns True; raises AssertionError naming the failing gradient, the
    channel, both sides and the tolerance.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"gradcheck: x must be a numpy.ndarray, got {type(x).__name__}")
    mdtype = getattr(module, "dtype", None)
    if mdtype is not None and np.dtype(mdtype) != np.float64:
        raise TypeError(f"gradcheck needs a float64 module, got a {np.dtype(mdtype)} module; finite "
                        "differences in lower precision are meaningless: build the module with "
                        "dtype=np.float64")
    if x.dtype != np.float64:
        raise TypeError(f"gradcheck needs float64 input, got {x.dtype}; convert with x.astype(np.float64)")
    if x.ndim < 2 or x.shape[1] == 0:
        raise ValueError(f"gradcheck: expected an (N, C, ...) input, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("gradcheck: x must be finite")
    h = 1e-3 if eps is None else float(eps)
    if not h > 0:
        raise ValueError(f"gradcheck: eps must be positive, got {eps!r}")
    rtol = 1e-6 if rtol is None else float(rtol)
    atol = 0.0 if atol is None else float(atol)
    n_probes = int(n_probes)
    if n_probes < 1:
        raise ValueError(f"gradcheck: n_probes must be >= 1, got {n_probes}")
    rng = np.random.default_rng(seed)
    if dy is None:
        dy = rng.standard_normal(x.shape)
    else:
        dy = np.asarray(dy)
        if dy.dtype != np.float64 or dy.shape != x.shape:
            raise TypeError(f"gradcheck: dy must be a float64 array of shape {x.shape}, "
                            f"got {dy.dtype} {dy.shape}")
    x = np.array(x, copy=True)   # the module may keep a reference for backward
    mode = "training" if getattr(module, "training", True) else "eval"
    bn_eps = float(getattr(module, "eps", 1e-5))
    gamma = getattr(module, "gamma", None)
    beta = getattr(module, "beta", None)
    affine = gamma is not None and beta is not None
    meps = float(np.finfo(np.float64).eps)
    axes = _channel_axes(x)
    C = x.shape[1]
    M = x.size // C

    def run(z: NDArray[np.float64]) -> NDArray[np.float64]:
        y = module.forward(z)
        if not isinstance(y, np.ndarray) or y.dtype != np.float64 or y.shape != z.shape:
            raise TypeError(f"gradcheck: forward must return a float64 array of shape {z.shape}, "
                            f"got {getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
        return y

    def csum(a: NDArray[Any]) -> NDArray[np.float64]:
        sums: NDArray[np.float64] = a.sum(axis=axes)
        return sums

    def terms(grad: NDArray[np.float64], delta_param: NDArray[np.float64] | float, y_plus: NDArray[np.float64],
              y_minus: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                                                     NDArray[np.float64]]:
        """Per channel: numeric and analytic change of L, absolute scale, rounding bound."""
        d = dy * (y_plus - y_minus)
        g = grad * delta_param
        mag = np.abs(dy) * (np.abs(y_plus) + np.abs(y_minus) + 2.0 * cond)
        return csum(d), csum(g), csum(np.abs(d)) + csum(np.abs(g)), 16.0 * meps * csum(mag)

    def check(name: str, probe: str, numeric: NDArray[np.float64], analytic: NDArray[np.float64],
              scale: NDArray[np.float64], rounding: NDArray[np.float64], how: str) -> None:
        bound = atol + rtol * scale + rounding
        err = np.abs(numeric - analytic)
        bad = ~(err <= bound)
        if bad.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(bad, err / bound, 0.0)
            ratio = np.where(bad & ~(bound > 0), np.inf, ratio)
            c = int(np.argmax(ratio))
            raise AssertionError(
                f"gradcheck ({mode} mode, {type(module).__name__}): {name} disagrees with finite "
                f"differences{probe} in {int(bad.sum())} of {C} channels; worst channel {c}:\n"
                f"  analytic (from backward) {float(analytic[c])!r}, numeric {float(numeric[c])!r} "
                f"({how}), |difference| {float(err[c]):.6g} > tolerance {float(bound[c]):.6g}\n"
                f"  tolerance = atol {atol:g} + rtol {rtol:g} * scale {float(scale[c]):.6g} + rounding "
                f"{float(rounding[c]):.3g}; step eps = {h:g}")

    snapshot = _snapshot(module)
    saved_gamma = None if gamma is None else np.array(gamma, copy=True)
    saved_beta = None if beta is None else np.array(beta, copy=True)
    try:
        run(x)
        dx = module.backward(dy)
        if not isinstance(dx, np.ndarray) or dx.shape != x.shape:
            raise AssertionError(f"gradcheck: backward returned {type(dx).__name__} "
                                 f"{getattr(dx, 'shape', '')}, expected an array of shape {x.shape}")
        dx = np.array(dx, dtype=np.float64, copy=True)
        grads: dict[str, NDArray[np.float64]] = {}
        if affine:
            for name in ("grad_gamma", "grad_beta"):
                g = getattr(module, name, None)
                if g is None:
                    raise AssertionError(f"gradcheck: backward of an affine module left {name} None")
                grads[name] = np.array(g, dtype=np.float64, copy=True).reshape(-1)

        _, _, s, x_max, _ = _x_statistics(x, bn_eps)
        g_abs = np.ones(C) if saved_gamma is None else np.abs(saved_gamma)
        cond = _per_channel(g_abs * (1.0 + math.sqrt(M)) * (1.0 + x_max / s), x.ndim)
        s = _per_channel(s, x.ndim)
        for k in range(n_probes):
            v = rng.standard_normal(x.shape) * s
            results: list[tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                                NDArray[np.float64]]] = []
            for t in (h, 2.0 * h):
                x_plus, x_minus = x + t * v, x - t * v
                step = x_plus - x_minus        # exact: the two are within a factor 2
                results.append(terms(dx, step, run(x_plus), run(x_minus)))
            (n1, a1, s1, r1), (n2, a2, _, r2) = results
            # Richardson: (n - a)(t) = 2t<e, v> + c t^3 + O(t^5) with e the error of dx;
            # (8 (n - a)(h) - (n - a)(2h)) / 6 = 2h<e, v> + O(h^5).
            discrepancy = (8.0 * (n1 - a1) - (n2 - a2)) / 6.0
            check("grad_input (dx)", f" along random direction {k}", a1 + discrepancy, a1, s1,
                  (8.0 * r1 + r2) / 6.0, "extrapolated from steps eps and 2 eps")

        if affine:
            for name, param, saved in (("grad_gamma", gamma, saved_gamma),
                                       ("grad_beta", beta, saved_beta)):
                assert param is not None and saved is not None  # affine: both exist and were copied
                delta = 1e-3 * (1.0 + np.abs(saved))   # y is linear in gamma and beta
                p_plus, p_minus = saved + delta, saved - delta
                param[...] = p_plus
                y_plus = run(x)
                param[...] = p_minus
                y_minus = run(x)
                param[...] = saved
                numeric, _, scale_n, rounding = terms(np.zeros_like(dx), 0.0, y_plus, y_minus)
                analytic = grads[name] * (p_plus - p_minus)
                short = "dgamma" if name == "grad_gamma" else "dbeta"
                check(f"{name} ({short})", "", numeric, analytic, scale_n + np.abs(analytic), rounding,
                      f"central difference in {short.replace('d', '', 1)}")
    finally:
        if gamma is not None:
            gamma[...] = saved_gamma
        if beta is not None:
            beta[...] = saved_beta
        _restore(module, snapshot)
    return True
