"""Child side: the float64 formulas that results are checked against, and their error scales."""

from __future__ import annotations

import math

from .vocabulary import NAN


class Formulas:
    """Program's expected values (a mixin)."""

    def close(self, actual, expected, scale, rtol):
        """|actual - expected| <= rtol * scale elementwise, non-finite values matched exactly.

        Each value is also allowed the dtype's absolute rounding floor (half its smallest
        subnormal: a smaller result underflows to 0), and an actual inf stands for a value
        past the dtype's largest (which rounds to inf) where the tolerance reaches that far."""
        np = self.np
        a = np.asarray(actual, dtype=np.float64)
        e = np.asarray(expected, dtype=np.float64)
        if a.shape != e.shape:
            return f"shape {a.shape}, expected {e.shape}"
        finite = np.isfinite(e)
        if not np.array_equal(np.isnan(a[~finite]), np.isnan(e[~finite])):
            return "NaN where the formula has none or the reverse"
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(a[finite] - e[finite])
            tol = rtol * (np.asarray(scale, dtype=np.float64)[finite] + 1e-30)
        dtype = np.asarray(actual).dtype
        if dtype.kind == "f":  # a result below half the smallest subnormal rounds to 0
            tol = tol + float(np.finfo(dtype).smallest_subnormal) / 2
        bad = ~(err <= tol)
        if dtype.kind == "f":  # a result past the dtype's largest value rounds to inf
            largest = np.finfo(dtype).max
            below = np.nextafter(largest, dtype.type(0))
            overflow = float(largest) + (float(largest) - float(below)) / 2  # the rounding boundary
            a_f, e_f = a[finite], e[finite]
            bad &= ~(np.isinf(a_f) & (np.sign(a_f) == np.sign(e_f)) & (np.abs(e_f) + tol >= overflow))
        if bad.any():
            i = int(np.argmax(bad))
            return f"{bad.sum()} values off, e.g. {a[finite][i]!r} vs {e[finite][i]!r} (tol {tol[i]:.3g})"
        return None

    def clean(self, *arrays):
        """Inputs for which the float64 formulas are a fair yardstick."""
        np = self.np
        for a in arrays:
            if a is None:
                continue
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or a.size > 200_000:
                return False
            with np.errstate(invalid="ignore", over="ignore"):
                if not np.isfinite(a).all() or (a.size and np.abs(a).max() > 1e15):
                    return False
        return True

    @staticmethod
    def rtol(dtype):
        return {2: 4e-3, 4: 1e-5, 8: 1e-12}[dtype.itemsize]

    def per_channel(self, v, ndim):
        return self.np.asarray(v, dtype=self.np.float64).reshape((1, -1) + (1,) * (ndim - 2))

    def expected_forward(self, x, gamma, beta, mean, var, eps, relu=False):
        np = self.np
        x64 = np.asarray(x, dtype=np.float64)
        nd = x64.ndim
        invstd = 1.0 / np.sqrt(self.per_channel(var, nd) + eps)
        g = self.per_channel(np.ones(x64.shape[1]) if gamma is None else gamma, nd)
        b = self.per_channel(np.zeros(x64.shape[1]) if beta is None else beta, nd)
        xhat = (x64 - self.per_channel(mean, nd)) * invstd
        if self.tamper:  # the harness's self-test: a wrong formula must be noticed
            b = b + 1.0
        y = g * xhat + b
        scale = np.abs(g) * (np.abs(xhat) + 1) + np.abs(b) + np.abs(y)
        return (np.maximum(y, 0.0) if relu else y), scale

    def batch_stats(self, x):
        np = self.np
        x64 = np.asarray(x, dtype=np.float64)
        axes = (0,) + tuple(range(2, x64.ndim))
        if x64.size == 0:
            return np.full(x64.shape[1], NAN), np.full(x64.shape[1], NAN), 0
        return x64.mean(axis=axes), x64.var(axis=axes), x64.size // x64.shape[1]

    def expected_backward(self, dy, x, gamma, mean, var_or_invstd, eps, batch, invstd_given=False, relu=False,
                          beta=None):
        """dx, dgamma, dbeta and their error scales; (None, ...) where a fused ReLU's
        threshold is too close to call."""
        np = self.np
        dy = np.asarray(dy, np.float64)
        x = np.asarray(x, np.float64)
        nd = x.ndim
        axes = (0,) + tuple(range(2, nd))
        C = x.shape[1]
        M = x.size // C if C else 0
        invstd = self.per_channel(var_or_invstd if invstd_given else 1.0 / np.sqrt(np.asarray(var_or_invstd) + eps),
                                 nd)
        g = self.per_channel(np.ones(C) if gamma is None else gamma, nd)
        xhat = (x - self.per_channel(mean, nd)) * invstd
        if relu:  # the gradient passes where the output g * xhat + b is positive
            y = g * xhat + self.per_channel(np.zeros(C) if beta is None else beta, nd)
            if (np.abs(y) <= 1e-6 * (np.abs(g) * np.abs(xhat) + 1e-30)).any():
                return None, None, None, None
            dy = np.where(y > 0, dy, 0.0)
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        if batch and M:
            mdy = self.per_channel(dbeta / M, nd)
            mdyx = self.per_channel(dgamma / M, nd)
            dx = g * invstd * (dy - mdy - xhat * mdyx)
            scale = np.abs(g) * invstd * (np.abs(dy) + np.abs(mdy) + np.abs(xhat) * (
                np.abs(dy) * (1 + np.abs(xhat))).mean(axis=axes, keepdims=True) + np.abs(mdyx) * (1 + np.abs(xhat)))
        else:
            dx = g * invstd * dy
            scale = np.abs(dx) + 1e-300
        sd = (np.abs(dy) * (1 + np.abs(xhat))).sum(axis=axes) * (1 + math.sqrt(max(M, 1)))
        sb = np.abs(dy).sum(axis=axes) * (1 + math.sqrt(max(M, 1)))
        return dx, dgamma, dbeta, (scale * (1 + 1e-3 * math.sqrt(max(M, 1))), sd, sb)
