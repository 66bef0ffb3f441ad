"""API fuzzing: every public constructor, method, attribute and function called with
arbitrary Python values, in a child process.

Hypothesis generates *programs*: short sequences of calls on one or two modules and
the functional layer, whose arguments are recipes for values (wrong types, None,
nested lists, 0-d and empty arrays, huge and negative sizes, NaN/inf, object,
string, structured and datetime arrays, float16, byte-swapped, unaligned,
read-only, non-contiguous, channels-last and zero-stride (np.broadcast_to) views,
NumPy subclasses, the module's own arrays passed back to it, and arrays resized or
overwritten between calls). Recipes are plain data: a server process (this file run
as a script) builds the values and runs each program in a process forked from it,
so a segfault, an abort or a hang (a timeout) is reported as a failure of that
program instead of killing pytest.

For every call the only acceptable outcomes are
  * success with a correct result: the right type, shape, dtype and layout, the
    values of the float64 formulas where the inputs are clean, and the module's state
    updated as documented (num_batches_tracked, running statistics), or
  * one of the documented exceptions (ALLOWED), leaving the module's state as it was.
Never a signal, a hang, another exception type or an exception out of a getter.

The number of programs and calls run is printed at the end of the module and
recorded as the junit properties fuzz_programs / fuzz_calls. BNORM_FUZZ_SCALE
multiplies the number of examples (default 1: about 10,000 calls in under a minute
on two cores).
"""
from __future__ import annotations

import collections
import functools
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback


ALLOWED = ("TypeError", "ValueError", "RuntimeError", "AttributeError", "KeyError", "OverflowError", "MemoryError")

NAN, INF = float("nan"), float("inf")
WEIRD_LITERALS = [
    None, True, False, 0, 1, -1, 2, 3, 2**31, 2**31 - 1, 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64, 10**100,
    0.0, -0.0, 0.5, 1.0, 1.5, -1e-5, 1e-5, 1e-300, 5e-324, 1e308, NAN, INF, -INF, 1j, complex(NAN, 0),
    "", "a", "float32", "float64", "float16", "cpu", b"", b"\x00\x01", bytearray(b"ab"),
    [], [1.0], [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]], [[1.0], [1.0, 2.0]], [None], [[[]]], (), (1,), (1.0, "a"),
    {}, {"weight": 1.0}, {1: 2}, set(), frozenset([1]), range(3), slice(1), Ellipsis, NotImplemented,
]
DTYPES = ["float32", "float64", "float16", ">f4", ">f8", "longdouble", "int8", "int64", "uint8", "bool", "complex64",
          "object", "U3", "S3", "struct", "datetime64[s]", "timedelta64[s]", "V8"]
LAYOUTS = ["c", "c", "c", "f", "channels_last", "strided", "reversed", "transposed", "broadcast", "broadcast_writeable",
           "readonly", "unaligned", "byteswapped", "masked", "subclass", "view", "list", "nested_list", "zero_d_item"]
FILLS = ["normal", "normal", "normal", "offset", "zeros", "constant", "nan_one", "inf_one", "huge", "tiny", "ints"]
MODULE_ATTRS = ["gamma", "beta", "weight", "bias", "running_mean", "running_var", "num_batches_tracked", "training",
                "eps", "momentum"]
READONLY_ATTRS = ["num_features", "affine", "track_running_stats", "dtype", "activation", "grad_gamma",
                  "grad_beta", "not_an_attribute", "forward", "__class__"]
MUTATIONS = ["fill_nan", "fill_inf", "fill_zero", "fill_big", "resize_smaller", "resize_larger", "resize_empty",
             "reshape_2d", "readonly", "writeable"]


# =====================================================================================
# The child side: build values from recipes, run a program, check every outcome.
# (Runs in the forked process; imports numpy and bnorm only there and in the server.)
# =====================================================================================

class _Unbuildable(Exception):
    """A recipe that NumPy itself refuses (e.g. a shape too big): the op is skipped."""


def _subclass():
    import numpy as np

    class FuzzArray(np.ndarray):
        pass

    return FuzzArray


def _exc_allowed(exc):
    return any(cls.__name__ in ALLOWED and cls.__module__ == "builtins" for cls in type(exc).__mro__)


class Program:
    """One program's namespace, value builder, call runner and checks."""

    def __init__(self, case):
        import numpy as np

        import bnorm

        self.np, self.bnorm = np, bnorm
        self.case = case
        self.rng = np.random.default_rng(case.get("seed", 0))
        self.modules = []
        self.ns = {}
        self.mutated_modules = set()  # modules whose arrays the program resized or reshaped
        self.outcomes = []
        self.problems = []
        self.calls = 0
        self.tamper = False

    # ---- values ----

    def fill(self, shape, fill, dtype="float64"):
        np = self.np
        size = int(np.prod(shape)) if shape else 1
        if size > 50_000_000:
            raise _Unbuildable("too big to fill")
        if fill == "zeros":
            a = np.zeros(shape)
        elif fill == "constant":
            a = np.full(shape, 3.25)
        elif fill == "offset":
            a = 100.0 + self.rng.standard_normal(shape)
        elif fill == "huge":
            a = self.rng.standard_normal(shape) * (1e30 if np.dtype(dtype).itemsize >= 4 else 1e4)
        elif fill == "tiny":
            a = self.rng.standard_normal(shape) * 1e-40
        elif fill == "ints":
            a = self.rng.integers(-3, 4, shape).astype(np.float64)
        else:
            a = self.rng.standard_normal(shape)
        a = np.asarray(a, dtype=np.float64)
        if fill in ("nan_one", "inf_one") and a.size:
            a.reshape(-1)[self.rng.integers(a.size)] = NAN if fill == "nan_one" else INF
        return a

    def typed(self, values, dtype):
        np = self.np
        if dtype == "struct":
            out = np.zeros(values.shape, dtype=[("a", "f4"), ("b", "f4")])
            out["a"] = values
            return out
        if dtype == "object":
            out = np.empty(values.shape, dtype=object)
            out.reshape(-1)[:] = [float(v) for v in values.reshape(-1)]
            return out
        if dtype in ("U3", "S3"):
            return values.astype(np.int64).astype(dtype) if values.size else np.zeros(values.shape, dtype)
        if dtype.startswith(("datetime", "timedelta", "int", "uint")):
            with np.errstate(invalid="ignore", over="ignore"):
                return np.nan_to_num(values).astype(np.int64).astype(dtype)
        if dtype == "V8":
            return np.zeros(values.shape, dtype="V8")
        with np.errstate(invalid="ignore", over="ignore"):
            return values.astype(dtype)

    def array(self, dtype, shape, layout, fill):
        np = self.np
        shape = tuple(shape)
        if layout == "broadcast" or layout == "broadcast_writeable":
            small = tuple(s if i == 1 else 1 for i, s in enumerate(shape)) if len(shape) > 1 else (1,) * len(shape)
            if any(s == 0 for s in small):
                small = tuple(0 if s == 0 else 1 for s in small)
            base = self.typed(self.fill(small, fill, dtype), dtype)
            if layout == "broadcast":
                return np.broadcast_to(base, shape)
            strides = tuple(0 if b == 1 else st for b, st in zip(base.shape, base.strides))
            return np.lib.stride_tricks.as_strided(base, shape, strides, writeable=True)
        size = math.prod(shape)
        if size > 2_000_000:
            raise _Unbuildable("too big")
        values = self.fill(shape, fill, dtype)
        if layout == "list":
            return values.tolist()
        if layout == "nested_list":
            return [values.tolist()]
        if layout == "zero_d_item":
            return self.typed(values, dtype)[(0,) * len(shape)] if size else np.float32(1.0)
        a = self.typed(values, dtype)
        if layout == "f":
            return np.asfortranarray(a)
        if layout == "channels_last" and a.ndim >= 3:
            order = (0,) + tuple(range(2, a.ndim)) + (1,)
            back = (0, a.ndim - 1) + tuple(range(1, a.ndim - 1))
            return np.ascontiguousarray(a.transpose(order)).transpose(back)
        if layout == "strided" and a.ndim:
            big = np.repeat(a, 2, axis=-1)
            return big[..., ::2]
        if layout == "reversed" and a.ndim:
            return np.ascontiguousarray(a[::-1])[::-1]
        if layout == "transposed" and a.ndim >= 2:
            return np.ascontiguousarray(a.T).T
        if layout == "readonly":
            a.setflags(write=False)
            return a
        if layout == "unaligned" and a.dtype.itemsize > 1 and a.dtype.kind in "fiu":
            raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
            u = raw.view(a.dtype).reshape(a.shape)
            u[...] = a
            return u
        if layout == "byteswapped" and a.dtype.kind == "f":
            return a.astype(a.dtype.newbyteorder())
        if layout == "masked":
            return np.ma.masked_array(a)
        if layout == "subclass":
            return a.view(_subclass())
        if layout == "view" and a.ndim:
            base = np.concatenate([a, a], axis=0) if a.shape[0] else a
            self.ns["base"] = base
            return base[: a.shape[0]]
        return a

    def build(self, r):
        np = self.np
        kind = r[0]
        if kind == "lit":
            return r[1]
        if kind == "object":
            return object()
        if kind == "scalar":
            try:
                return np.dtype(r[1]).type(r[2])
            except (TypeError, ValueError, OverflowError) as exc:
                raise _Unbuildable(exc)
        if kind == "array":
            try:
                return self.array(*r[1:])
            except (ValueError, MemoryError, TypeError, OverflowError) as exc:
                raise _Unbuildable(exc)
        if kind == "ns":
            if r[1] not in self.ns:
                raise _Unbuildable(f"nothing in {r[1]}")
            return self.ns[r[1]]
        if kind == "attr":
            if not self.modules:
                raise _Unbuildable("no module")
            return getattr(self.modules[r[1] % len(self.modules)], r[2])
        if kind == "module":
            if not self.modules:
                raise _Unbuildable("no module")
            return self.modules[r[1] % len(self.modules)]
        if kind == "state_dict":
            sd = dict(self.ns.get("state_dict") or {})
            if not sd and self.modules:
                sd = self.modules[r[1] % len(self.modules)].state_dict()
            for edit in r[2]:
                if edit[0] == "drop" and sd:
                    sd.pop(sorted(sd)[edit[1] % len(sd)])
                elif edit[0] == "set":
                    sd[edit[1]] = self.build(edit[2])
            return sd
        if kind == "list_of":
            return [self.build(x) for x in r[1]]
        if kind == "huge_view":
            # a zero-stride view of one element with a huge shape (NumPy may refuse the shape)
            try:
                return np.lib.stride_tricks.as_strided(np.zeros(1, r[1]), tuple(r[2]), (0,) * len(r[2]))
            except (ValueError, MemoryError, OverflowError) as exc:
                raise _Unbuildable(exc)
        raise AssertionError(f"unknown recipe {r!r}")

    # ---- checks ----

    def problem(self, op, message):
        self.problems.append(f"op {len(self.outcomes)} {op[0]}: {message}")

    def snapshot(self, m):
        np = self.np
        snap = {"training": m.training, "num_batches_tracked": m.num_batches_tracked}
        for attr in ("gamma", "beta", "running_mean", "running_var"):
            v = getattr(m, attr)
            snap[attr] = None if v is None else np.array(v, copy=True)
        snap["grad_gamma"] = m.grad_gamma
        snap["grad_beta"] = m.grad_beta
        return snap

    def same_snapshot(self, a, b):
        np = self.np
        for key in a:
            if key in ("grad_gamma", "grad_beta"):
                # the same array (or a view of it: a getter may return views), with the same values
                if (a[key] is None) != (b[key] is None) or (a[key] is not None and (
                        a[key].__array_interface__["data"][0] != b[key].__array_interface__["data"][0]
                        or not np.array_equal(a[key], b[key], equal_nan=True))):
                    return key
            elif isinstance(a[key], np.ndarray) or isinstance(b[key], np.ndarray):
                if a[key] is None or b[key] is None or a[key].shape != b[key].shape or not np.array_equal(
                        a[key], b[key], equal_nan=True):
                    return key
            elif a[key] != b[key]:
                return key
        return None

    def check_invariants(self, op, m):
        """The documented types of every attribute; a getter never raises."""
        np = self.np
        try:
            C, dtype = m.num_features, m.dtype
            pdt = np.dtype(np.float32) if dtype == np.float16 else dtype
            assert isinstance(C, int) and C > 0, f"num_features {C!r}"
            assert isinstance(dtype, np.dtype) and dtype.kind == "f", f"dtype {dtype!r}"
            assert type(m.training) is bool, f"training {m.training!r}"
            assert type(m.num_batches_tracked) is int and m.num_batches_tracked >= 0, \
                f"num_batches_tracked {m.num_batches_tracked!r}"
            assert isinstance(m.eps, float) and m.eps > 0 and math.isfinite(m.eps), f"eps {m.eps!r}"
            assert m.momentum is None or (isinstance(m.momentum, float) and math.isfinite(m.momentum))
            assert m.weight is m.gamma is None or np.shares_memory(m.weight, m.gamma), "weight is gamma"
            assert m.bias is m.beta is None or np.shares_memory(m.bias, m.beta), "bias is beta"
            for attr, present in (("gamma", m.affine), ("beta", m.affine and m.beta is not None), ("running_mean", m.track_running_stats),
                                  ("running_var", m.track_running_stats)):
                v = getattr(m, attr)
                if not present:
                    assert v is None, f"{attr} should be None"
                elif id(m) not in self.mutated_modules:
                    assert isinstance(v, np.ndarray) and v.shape == (C,) and v.dtype == pdt, \
                        f"{attr}: {type(v).__name__} {getattr(v, 'shape', None)} {getattr(v, 'dtype', None)}"
            for attr in ("grad_gamma", "grad_beta"):
                v = getattr(m, attr)
                assert v is None or (m.affine and v.shape == (C,) and v.dtype == pdt), f"{attr} {v!r}"
            repr(m)
            if id(m) not in self.mutated_modules:
                sd = m.state_dict()
                keys = (["weight", "bias"] if m.affine else []) + (
                    ["running_mean", "running_var", "num_batches_tracked"] if m.track_running_stats else [])
                assert sorted(sd) == sorted(keys), f"state_dict keys {sorted(sd)}"
        except AssertionError as exc:
            self.problem(op, f"invariant: {exc}")
        except Exception as exc:  # a getter or state_dict raising is a bug
            self.problem(op, f"invariant check raised {type(exc).__name__}: {exc}")

    def close(self, actual, expected, scale, rtol):
        """|actual - expected| <= rtol * scale elementwise, non-finite values matched exactly."""
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
        bad = ~(err <= tol)
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

    def check_output_array(self, op, result, x, dtype, out):
        np = self.np
        if out is not None:
            if result is not out:
                self.problem(op, "result is not the out= array")
        if not isinstance(result, np.ndarray):
            self.problem(op, f"result is a {type(result).__name__}")
            return False
        if result.shape != np.shape(x) or result.dtype != dtype:
            self.problem(op, f"result {result.shape} {result.dtype}, expected {np.shape(x)} {dtype}")
            return False
        cl = False
        if result.ndim >= 3 and not result.flags.c_contiguous:
            order = (0,) + tuple(range(2, result.ndim)) + (1,)
            cl = result.transpose(order).flags.c_contiguous
        if not (result.flags.c_contiguous or cl):
            self.problem(op, "result is neither C-contiguous nor channels-last")
        return True

    # ---- the calls ----

    def run(self):
        for i, op in enumerate(self.case["ops"]):
            os.write(2, f"# op {i}: {op!r}\n".encode()[:2000])
            try:
                outcome = self.run_op(op)
            except _Unbuildable as exc:
                outcome = ("unbuildable", str(exc)[:100])
            self.outcomes.append((op[0],) + tuple(outcome))
        for m in self.modules:
            self.check_invariants(("final",), m)
        return {"outcomes": self.outcomes, "problems": self.problems, "calls": self.calls}

    def call(self, op, fn, *args, **kwargs):
        """Run one API call; returns (outcome, result)."""
        self.calls += 1
        try:
            return ("ok", ""), fn(*args, **kwargs)
        except Exception as exc:
            if not _exc_allowed(exc):
                self.problem(op, f"raised {type(exc).__module__}.{type(exc).__name__}: {exc} "
                                 f"(allowed: {', '.join(ALLOWED)})\n{traceback.format_exc()[-1500:]}")
            return (type(exc).__name__, str(exc)[:160]), None

    def module_of(self, op):
        if not self.modules:
            raise _Unbuildable("no module")
        return self.modules[op[1] % len(self.modules)]

    def run_op(self, op):
        np = self.np
        name = op[0]
        if name == "construct":
            cls = getattr(self.bnorm, op[1])
            args = [self.build(a) for a in op[2]]
            kwargs = {k: self.build(v) for k, v in op[3].items()}
            outcome, m = self.call(op, cls, *args, **kwargs)
            if m is not None:
                if not isinstance(m, cls):
                    self.problem(op, f"constructor returned {type(m).__name__}")
                else:
                    self.check_construct(op, m, args, kwargs)
                    self.modules.append(m)
                    self.check_invariants(op, m)
            return outcome
        if name in ("forward", "call"):
            m = self.module_of(op)
            x = self.build(op[2])
            kwargs = {k: self.build(v) for k, v in op[3].items()}
            before = self.snapshot(m)
            fn = m.forward if name == "forward" else m
            outcome, y = self.call(op, fn, x, **kwargs)
            after = self.snapshot(m)
            if y is None:
                changed = self.same_snapshot(before, after)
                if changed:
                    self.problem(op, f"a failed forward changed {changed}")
            else:
                self.check_forward(op, m, x, kwargs.get("out"), y, before, after)
                self.ns["y"] = y
                self.ns["x"] = x
            self.check_invariants(op, m)
            return outcome
        if name == "backward":
            m = self.module_of(op)
            dy = self.build(op[2])
            kwargs = {k: self.build(v) for k, v in op[3].items()}
            before = self.snapshot(m)
            # out= may be dy itself (in-place backward): check against dy as it was.
            # Copied only then: dy may be a huge zero-stride view.
            out = kwargs.get("out")
            in_place = isinstance(dy, self.np.ndarray) and isinstance(out, self.np.ndarray) and \
                self.np.may_share_memory(dy, out)
            dy_before = self.np.array(dy, copy=True) if in_place else dy
            outcome, dx = self.call(op, m.backward, dy, **kwargs)
            after = self.snapshot(m)
            if dx is None:
                changed = self.same_snapshot(before, after)
                if changed:
                    self.problem(op, f"a failed backward changed {changed}")
            else:
                self.check_backward(op, m, dy_before, kwargs.get("out"), dx, before, after)
                self.ns["dx"] = dx
                self.ns["dy"] = dy
            self.check_invariants(op, m)
            return outcome
        if name in ("train", "eval"):
            m = self.module_of(op)
            args = [self.build(a) for a in op[2]]
            kwargs = {k: self.build(v) for k, v in op[3].items()}
            before = m.training
            outcome, result = self.call(op, getattr(m, name), *args, **kwargs)
            if outcome[0] == "ok":
                if result is not m:
                    self.problem(op, f"{name}() returned {result!r}, not the module")
                if name == "eval":
                    want = False
                else:
                    mode = args[0] if args else kwargs.get("mode", True)
                    want = bool(mode)
                if m.training is not want:
                    self.problem(op, f"training is {m.training}, expected {want}")
            elif m.training is not before:
                self.problem(op, "a failed train() changed the mode")
            self.check_invariants(op, m)
            return outcome
        if name == "state_dict":
            m = self.module_of(op)
            args = [self.build(a) for a in op[2]]
            outcome, sd = self.call(op, m.state_dict, *args)
            if sd is not None:
                self.ns["state_dict"] = sd
                for key, value in sd.items():
                    if not isinstance(value, np.ndarray):
                        self.problem(op, f"state_dict[{key}] is a {type(value).__name__}")
                    for attr in ("gamma", "beta", "running_mean", "running_var"):
                        own = getattr(m, attr)
                        if own is not None and isinstance(value, np.ndarray) and np.shares_memory(own, value):
                            self.problem(op, f"state_dict[{key}] shares memory with {attr}")
            return outcome
        if name == "load_state_dict":
            m = self.module_of(op)
            sd = self.build(op[2])
            kwargs = {k: self.build(v) for k, v in op[3].items()}
            before = self.snapshot(m)
            outcome, _ = self.call(op, m.load_state_dict, sd, **kwargs)
            after = self.snapshot(m)
            if outcome[0] != "ok":
                changed = self.same_snapshot(before, after)
                if changed and id(m) not in self.mutated_modules:
                    self.problem(op, f"a failed load_state_dict changed {changed} ({outcome[0]}: {outcome[1]})")
            elif isinstance(sd, dict) and id(m) not in self.mutated_modules:
                self.check_loaded(op, m, sd)
            self.check_invariants(op, m)
            return outcome
        if name == "setattr":
            m = self.module_of(op)
            attr = op[2]
            value = self.build(op[3])
            before = self.snapshot(m)
            old = getattr(m, attr, None)
            outcome, _ = self.call(op, setattr, m, attr, value)
            if outcome[0] == "ok":
                self.check_assigned(op, m, attr, value, old)
            else:
                changed = self.same_snapshot(before, self.snapshot(m))
                if changed:
                    self.problem(op, f"a failed assignment changed {changed}")
            self.check_invariants(op, m)
            return outcome
        if name == "delattr":
            m = self.module_of(op)
            outcome, _ = self.call(op, delattr, m, op[2])
            if outcome[0] == "ok":
                self.problem(op, f"deleting {op[2]} succeeded")
            self.check_invariants(op, m)
            return outcome
        if name == "getattr":
            m = self.module_of(op)
            outcome, _ = self.call(op, getattr, m, op[2])
            if outcome[0] != "ok" and op[2] != "not_an_attribute":
                self.problem(op, f"reading {op[2]} raised {outcome}")
            return outcome
        if name == "fold":
            m = self.module_of(op)
            args = [self.build(a) for a in op[2]]
            snap = self.snapshot(m)
            outcome, result = self.call(op, m.fold, *args)
            if result is not None:
                self.check_fold(op, m, args, snap, result)
            if self.same_snapshot(snap, self.snapshot(m)):
                self.problem(op, "fold changed the module")
            return outcome
        if name == "copy":
            import copy as copy_module

            m = self.module_of(op)
            how = {"copy": copy_module.copy, "deepcopy": copy_module.deepcopy,
                   "pickle": lambda v: pickle.loads(pickle.dumps(v))}[op[2]]
            outcome, clone = self.call(op, how, m)
            if clone is not None:
                if id(m) not in self.mutated_modules:
                    changed = self.same_snapshot(
                        {k: v for k, v in self.snapshot(m).items() if not k.startswith("grad")},
                        {k: v for k, v in self.snapshot(clone).items() if not k.startswith("grad")})
                    if changed:
                        self.problem(op, f"the copy differs in {changed}")
                    if repr(clone) != repr(m) or type(clone) is not type(m):
                        self.problem(op, f"the copy is {clone!r}, the original {m!r}")
                self.modules.append(clone)
                self.check_invariants(op, clone)
            elif id(m) not in self.mutated_modules:
                self.problem(op, f"copying a module raised {outcome}")
            return outcome
        if name == "batch_norm":
            args = [self.build(a) for a in op[1]]
            kwargs = {k: self.build(v) for k, v in op[2].items()}
            snap = {k: np.array(v, copy=True) for k, v in self.functional_params(args, kwargs).items()
                    if k in ("running_mean", "running_var", "weight", "bias") and isinstance(v, np.ndarray)
                    and v.size < 100_000}
            outcome, result = self.call(op, self.bnorm.functional.batch_norm, *args, **kwargs)
            if result is not None:
                self.check_batch_norm(op, args, kwargs, snap, result)
                self.ns["y"], self.ns["save_mean"], self.ns["save_invstd"] = result
                self.ns["x"] = args[0] if args else kwargs.get("x")
            return outcome
        if name == "batch_norm_backward":
            args = [self.build(a) for a in op[1]]
            kwargs = {k: self.build(v) for k, v in op[2].items()}
            outcome, result = self.call(op, self.bnorm.functional.batch_norm_backward, *args, **kwargs)
            if result is not None:
                self.check_batch_norm_backward(op, args, kwargs, result)
                self.ns["dx"] = result[0]
            return outcome
        if name == "set_num_threads":
            value = self.build(op[1])
            outcome, result = self.call(op, self.bnorm.set_num_threads, value)
            if outcome[0] == "ok":
                n = self.bnorm.get_num_threads()
                if n != int(value):
                    self.problem(op, f"get_num_threads() is {n} after set_num_threads({value!r})")
            return outcome
        if name == "mutate":
            self.mutate(op)
            return ("mutated", "")
        # self-tests of the harness (test_the_fuzzer_detects_*)
        if name == "selftest_crash":
            os.abort()  # (SIGABRT rather than a segfault: AddressSanitizer reports a SEGV as an error)
        if name == "selftest_raise":
            return self.call(op, lambda: 1 / 0)[0]
        if name == "selftest_wrong_formula":
            self.tamper = True
            return ("ok", "")
        raise AssertionError(f"unknown op {op!r}")

    # ---- mutations between calls (not API calls: their own errors are ignored) ----

    def mutate(self, op):
        np = self.np
        target, action = op[1], op[2]
        if target[0] == "attr":
            if not self.modules:
                return
            m = self.modules[target[1] % len(self.modules)]
            if getattr(m, target[2]) is None:
                return

            def get():
                return getattr(m, target[2])
        else:
            if target[1] not in self.ns or not isinstance(self.ns[target[1]], np.ndarray):
                return

            def get():
                return self.ns[target[1]]
        try:
            with np.errstate(all="ignore"):
                if action.startswith("fill_"):
                    get()[...] = {"fill_nan": NAN, "fill_inf": INF, "fill_zero": 0.0, "fill_big": 1e30}[action]
                elif action.startswith("resize"):
                    # called on the expression itself, as user code would: bn.running_mean.resize(...)
                    size = get().size
                    new = {"resize_smaller": max(size // 2, 1), "resize_larger": size * 4 + 8, "resize_empty": 0}
                    if target[0] == "attr":
                        getattr(m, target[2]).resize(new[action])
                        self.mutated_modules.add(id(m))
                    else:
                        self.ns[target[1]].resize(new[action])
                elif action == "reshape_2d":
                    if target[0] == "attr":
                        getattr(m, target[2]).shape = (1, -1)
                        self.mutated_modules.add(id(m))
                    else:
                        self.ns[target[1]].shape = (1, -1)
                elif action == "readonly":
                    get().setflags(write=False)
                elif action == "writeable":
                    get().setflags(write=True)
        except (ValueError, TypeError, AttributeError):
            pass

    # ---- result checks ----

    def check_construct(self, op, m, args, kwargs):
        names = ["num_features", "eps", "momentum", "affine", "track_running_stats", "dtype", "activation"]
        given = dict(zip(names, args))
        given.update(kwargs)
        np = self.np
        try:
            if "num_features" in given:
                assert m.num_features == int(given["num_features"]), "num_features"
            if "eps" in given:
                assert m.eps == float(given["eps"]), "eps"
            if "momentum" in given:
                mo = given["momentum"]
                assert (m.momentum is None) if mo is None else (m.momentum == float(mo)), "momentum"
            for flag in ("affine", "track_running_stats"):
                if flag in given:
                    assert getattr(m, flag) == bool(given[flag]), flag
            if given.get("dtype") is not None:
                assert m.dtype == np.dtype(given["dtype"]).newbyteorder("="), "dtype"
            assert m.activation == given.get("activation"), "activation"
            assert m.training is True and m.num_batches_tracked == 0, "fresh state"
            if m.affine:
                assert (m.gamma == 1).all() and (m.beta == 0).all(), "initial gamma/beta"
            if m.track_running_stats:
                assert (m.running_mean == 0).all() and (m.running_var == 1).all(), "initial running stats"
        except AssertionError as exc:
            self.problem(op, f"constructed module does not match its arguments: {exc} ({m!r})")

    def check_forward(self, op, m, x, out, y, before, after):
        np = self.np
        self.ns["_last_forward"] = None  # set again below when this forward can be checked
        if not self.check_output_array(op, y, x, m.dtype, out):
            return
        batch = before["training"] or not m.track_running_stats
        tracks = before["training"] and m.track_running_stats
        want_nbt = before["num_batches_tracked"] + (1 if tracks else 0)
        # at 2**63 - 1 (int64's maximum, like PyTorch's counter) the count may stay there
        if after["num_batches_tracked"] not in (want_nbt, min(want_nbt, 2**63 - 1)):
            self.problem(op, f"num_batches_tracked {after['num_batches_tracked']}, expected {want_nbt}")
        if not tracks and id(m) not in self.mutated_modules:
            for attr in ("running_mean", "running_var"):
                if before[attr] is not None and not np.array_equal(before[attr], after[attr], equal_nan=True):
                    self.problem(op, f"{attr} changed by a forward that must not update it")
        if id(m) in self.mutated_modules or not self.clean(x, before["gamma"], before["beta"],
                                                         before["running_mean"], before["running_var"]):
            return
        if m.track_running_stats and not batch and (before["running_var"] < 0).any():
            return
        rtol = self.rtol(m.dtype)
        if batch:
            mean, var, count = self.batch_stats(x)
        else:
            mean, var, count = before["running_mean"], before["running_var"], None
        if batch and count == 0:
            if y.size:
                self.problem(op, "non-empty output for an empty batch")
        else:
            expected, scale = self.expected_forward(x, before["gamma"], before["beta"], mean, var, m.eps,
                                                    m.activation == "relu")
            msg = self.close(y, expected, scale, rtol)
            if msg:
                self.problem(op, f"forward output: {msg}")
        if tracks and count:
            mo = m.momentum if m.momentum is not None else 1.0 / after["num_batches_tracked"]
            rm = (1 - mo) * before["running_mean"] + mo * mean
            rv = (1 - mo) * before["running_var"] + mo * var * count / max(count - 1, 1)
            # momentum may be any finite float (as in torch): outside [0, 1] both terms
            # are scaled up, and the result may overflow the dtype to inf.
            scale_m = abs(1 - mo) * np.abs(before["running_mean"]) + abs(mo) * (np.abs(mean) + np.sqrt(var)) + 1e-30
            scale_v = abs(1 - mo) * np.abs(before["running_var"]) + abs(mo) * var * count / max(count - 1, 1) + 1e-30
            for attr, want, scale in (("running_mean", rm, scale_m), ("running_var", rv, scale_v)):
                with np.errstate(over="ignore", invalid="ignore"):
                    want = np.asarray(want).astype(after[attr].dtype)
                msg = self.close(after[attr], want, scale, 2 * self.rtol(after[attr].dtype))
                if msg:
                    self.problem(op, f"{attr} after a training forward: {msg}")
        self.ns["_last_forward"] = {
            "module": id(m), "x": np.array(x, dtype=np.float64, copy=True), "x_obj": x, "batch": batch,
            "mean": np.asarray(mean, np.float64), "var": np.asarray(var, np.float64), "gamma": before["gamma"],
            "beta": before["beta"],
            "overwritten": out is not None and isinstance(out, np.ndarray) and out is x,
        }

    def check_backward(self, op, m, dy, out, dx, before, after):
        np = self.np
        last = self.ns.get("_last_forward")
        x_shape = np.shape(dy)
        if not self.check_output_array(op, dx, np.empty(x_shape), m.dtype, out):
            return
        pdt = np.dtype(np.float32) if m.dtype == np.float16 else m.dtype
        if m.affine:
            for attr in ("grad_gamma", "grad_beta"):
                g = after[attr]
                if not isinstance(g, np.ndarray) or g.shape != (m.num_features,) or g.dtype != pdt:
                    self.problem(op, f"{attr} after backward: {g!r}")
                    return
        elif after["grad_gamma"] is not None or after["grad_beta"] is not None:
            self.problem(op, "gradients of parameters that do not exist")
        if last is None or last["module"] != id(m) or id(m) in self.mutated_modules:
            return
        x_obj = last["x_obj"]
        if not isinstance(x_obj, np.ndarray) or not np.array_equal(
                np.asarray(x_obj, np.float64), last["x"], equal_nan=True):
            return  # the input changed since the forward
        for attr in ("gamma", "beta"):
            if before[attr] is not None and not np.array_equal(before[attr], last[attr], equal_nan=True):
                return
        if not self.clean(last["x"], dy, before["gamma"]) or not np.isfinite(last["var"]).all():
            return
        dx_e, dg_e, db_e, scales = self.expected_backward(dy, last["x"], before["gamma"], last["mean"], last["var"],
                                                          m.eps, last["batch"], relu=m.activation == "relu",
                                                          beta=before["beta"])
        if dx_e is None:
            return
        rtol = self.rtol(m.dtype)
        msg = self.close(dx, dx_e, scales[0], rtol)
        if msg:
            self.problem(op, f"dx: {msg}")
        if m.affine:
            for attr, e, s in (("grad_gamma", dg_e, scales[1]), ("grad_beta", db_e, scales[2])):
                msg = self.close(after[attr], e, s, 2 * self.rtol(pdt))
                if msg:
                    self.problem(op, f"{attr}: {msg}")

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

    def check_fold(self, op, m, args, snap, result):
        np = self.np
        if not (isinstance(result, tuple) and len(result) == 2):
            self.problem(op, f"fold returned {result!r}")
            return
        weight = args[0]
        bias = args[1] if len(args) > 1 else None
        w2, b2 = result
        if not isinstance(w2, np.ndarray) or w2.shape != np.shape(weight) or not isinstance(b2, np.ndarray) or \
                b2.shape != (m.num_features,) or (isinstance(weight, np.ndarray) and w2.dtype != weight.dtype):
            self.problem(op, f"fold returned {type(w2).__name__} {getattr(w2, 'shape', None)}, "
                             f"{type(b2).__name__} {getattr(b2, 'shape', None)} for weight {np.shape(weight)}")
            return
        if not isinstance(weight, np.ndarray):
            return
        if id(m) in self.mutated_modules or not self.clean(weight, snap["gamma"], snap["beta"], snap["running_mean"],
                                                           snap["running_var"]):
            return
        if bias is not None and not (isinstance(bias, np.ndarray) and self.clean(bias)):
            return
        C = m.num_features
        g = np.ones(C) if snap["gamma"] is None else snap["gamma"].astype(np.float64)
        b = np.zeros(C) if snap["beta"] is None else snap["beta"].astype(np.float64)
        s = g / np.sqrt(snap["running_var"].astype(np.float64) + m.eps)
        want_w = weight.astype(np.float64) * s.reshape((C,) + (1,) * (weight.ndim - 1))
        bias64 = np.zeros(C) if bias is None else np.asarray(bias, np.float64)
        want_b = (bias64 - snap["running_mean"]) * s + b
        for what, got, want in (("weight", w2, want_w), ("bias", b2, want_b)):
            msg = self.close(got, want, np.abs(want) + np.abs(b) + 1e-30, 2 * self.rtol(weight.dtype))
            if msg:
                self.problem(op, f"folded {what}: {msg}")

    def check_loaded(self, op, m, sd):
        np = self.np
        for key, attr in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "running_mean"),
                          ("running_var", "running_var")):
            if key in sd and getattr(m, attr) is not None:
                want = np.asarray(sd[key]).astype(getattr(m, attr).dtype)
                if not np.array_equal(getattr(m, attr), want, equal_nan=True):
                    self.problem(op, f"{attr} after load_state_dict differs from state_dict[{key!r}]")
        if "num_batches_tracked" in sd and m.track_running_stats:
            if m.num_batches_tracked != int(np.asarray(sd["num_batches_tracked"])):
                self.problem(op, "num_batches_tracked not loaded")

    def check_assigned(self, op, m, attr, value, old):
        np = self.np
        now = getattr(m, attr)
        if attr in ("gamma", "beta", "weight", "bias", "running_mean", "running_var"):
            if not (isinstance(now, np.ndarray) and isinstance(old, np.ndarray) and np.shares_memory(now, old)):
                self.problem(op, f"assigning {attr} replaced the array instead of copying into it")
            if id(m) not in self.mutated_modules and not np.array_equal(now, value, equal_nan=True):
                self.problem(op, f"{attr} after assignment differs from the value assigned")
            if isinstance(value, np.ndarray) and now is not None and np.shares_memory(now, value) and \
                    not np.shares_memory(value, old):
                self.problem(op, f"{attr} shares memory with the assigned array")
        elif attr == "training":
            if now is not bool(value):
                self.problem(op, f"training is {now!r} after assigning {value!r}")
        elif attr == "eps":
            if not (now == float(value) and now > 0 and math.isfinite(now)):
                self.problem(op, f"eps is {now!r} after assigning {value!r}")
        elif attr == "momentum":
            if now != (None if value is None else float(value)):
                self.problem(op, f"momentum is {now!r} after assigning {value!r}")
        elif attr == "num_batches_tracked":
            if now != int(value):
                self.problem(op, f"num_batches_tracked is {now!r} after assigning {value!r}")
        else:
            self.problem(op, f"assigning the read-only or unknown attribute {attr} succeeded")

    def functional_params(self, args, kwargs):
        names = ["x", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps", "out"]
        params = dict(zip(names, args))
        params.update(kwargs)
        return params

    def check_batch_norm(self, op, args, kwargs, snap, result):
        np = self.np
        p = self.functional_params(args, kwargs)
        x = p.get("x")
        if not (isinstance(result, tuple) and len(result) == 3):
            self.problem(op, f"batch_norm returned {type(result).__name__}")
            return
        y, mean, invstd = result
        if not self.check_output_array(op, y, x, x.dtype.newbyteorder("="), p.get("out")):
            return
        C = x.shape[1]
        for name, v in (("save_mean", mean), ("save_invstd", invstd)):
            if not isinstance(v, np.ndarray) or v.shape != (C,) or v.dtype != np.float64:
                self.problem(op, f"{name}: {v!r}")
                return
        rm, rv = snap.get("running_mean"), snap.get("running_var")
        if any(isinstance(p.get(k), np.ndarray) and k not in snap for k in ("running_mean", "running_var", "weight",
                                                                           "bias")):
            return
        training = bool(p.get("training", False))
        batch = training or rm is None
        w, b = snap.get("weight"), snap.get("bias")
        if not self.clean(x, w, b, rm, rv) or (rv is not None and (rv < 0).any()):
            return
        # the running arrays may alias x, y or each other: skip value checks then
        arrays = [a for a in (p.get("running_mean"), p.get("running_var"), p.get("weight"), p.get("bias"))
                  if isinstance(a, np.ndarray)]
        if any(np.shares_memory(a, c) for a in arrays for c in arrays + [x, y] if a is not c):
            return
        eps = float(p.get("eps", 1e-5))
        relu = p.get("activation") == "relu"
        if batch:
            bmean, bvar, count = self.batch_stats(x)
        else:
            bmean, bvar, count = rm, rv, None
        if batch and count == 0:
            return
        rtol = self.rtol(x.dtype)
        expected, scale = self.expected_forward(x, w, b, bmean, bvar, eps, relu)
        for what, got, want, s in (("y", y, expected, scale),
                                   ("save_mean", mean, bmean, np.abs(bmean) + np.sqrt(bvar) + 1e-300),
                                   ("save_invstd", invstd, 1 / np.sqrt(np.asarray(bvar, np.float64) + eps),
                                    1 / np.sqrt(np.asarray(bvar, np.float64) + eps) * (1 + 1e-3))):
            msg = self.close(got, want, s, rtol if what == "y" else 1e-9)
            if msg:
                self.problem(op, f"batch_norm {what}: {msg}")
        if training and rm is not None and count:
            mo = float(p.get("momentum", 0.1))
            now_m, now_v = p.get("running_mean"), p.get("running_var")
            want_m = (1 - mo) * rm + mo * bmean
            want_v = (1 - mo) * rv + mo * bvar * count / max(count - 1, 1)
            for what, got, want, s in (("running_mean", now_m, want_m, np.abs(rm) + np.abs(bmean) + np.sqrt(bvar)),
                                       ("running_var", now_v, want_v, np.abs(rv) + bvar * count / max(count - 1, 1))):
                msg = self.close(got, want, s + 1e-30, 2 * self.rtol(got.dtype))
                if msg:
                    self.problem(op, f"batch_norm {what} update: {msg}")

    def check_batch_norm_backward(self, op, args, kwargs, result):
        np = self.np
        names = ["dy", "x", "save_mean", "save_invstd", "weight", "training", "out"]
        p = dict(zip(names, args))
        p.update(kwargs)
        x, dy = p["x"], p["dy"]
        if not (isinstance(result, tuple) and len(result) == 3):
            self.problem(op, f"batch_norm_backward returned {type(result).__name__}")
            return
        dx, dw, db = result
        if not self.check_output_array(op, dx, x, x.dtype.newbyteorder("="), p.get("out")):
            return
        pdt = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype.newbyteorder("=")
        for name, v in (("dweight", dw), ("dbias", db)):
            if not isinstance(v, np.ndarray) or v.shape != (x.shape[1],) or v.dtype != pdt:
                self.problem(op, f"{name}: {v!r}")
                return
        mean, invstd, w = p["save_mean"], p["save_invstd"], p.get("weight")
        try:
            mean = np.asarray(mean, dtype=np.float64)
            invstd = np.asarray(invstd, dtype=np.float64)
        except (TypeError, ValueError):
            return
        if not self.clean(x, dy, w, mean, invstd) or (p.get("out") is not None and p.get("out") is dy):
            return
        if invstd.size and np.abs(invstd).max() > 1e6:
            return
        bias = p.get("bias")
        if bias is not None and not self.clean(bias):
            return
        dx_e, dw_e, db_e, scales = self.expected_backward(dy, x, w, mean, invstd, 0.0, bool(p.get("training", True)),
                                                          invstd_given=True, relu=p.get("activation") == "relu",
                                                          beta=bias)
        if dx_e is None:
            return
        rtol = self.rtol(x.dtype)
        for what, got, want, s, r in (("dx", dx, dx_e, scales[0], rtol), ("dweight", dw, dw_e, scales[1], 2 * self.rtol(pdt)),
                                      ("dbias", db, db_e, scales[2], 2 * self.rtol(pdt))):
            msg = self.close(got, want, s, r)
            if msg:
                self.problem(op, f"batch_norm_backward {what}: {msg}")


# =====================================================================================
# The server: preloads NumPy and bnorm, then forks one child per program.
# =====================================================================================

def _limit_memory():
    """Huge allocations fail fast with MemoryError instead of eating the machine
    (not under AddressSanitizer, which reserves terabytes of address space)."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        return
    import resource

    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vsize + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_child(case, result_fd):
    import faulthandler
    import gc
    import warnings

    faulthandler.enable()
    _limit_memory()
    warnings.simplefilter("ignore")  # warnings are not failures here; exceptions are
    try:
        program = Program(case)
        result = program.run()
    except BaseException:  # a bug in the fuzzer itself
        result = {"internal": traceback.format_exc()}
        program = None
    data = pickle.dumps(result)
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(result_fd, view):]
    # Tear everything down so that heap corruption shows up now, in this child.
    del program, result
    gc.collect()


def serve():
    import gc

    import copy  # noqa: F401  (everything a child uses is loaded once here, shared by every child)
    import faulthandler  # noqa: F401
    import resource  # noqa: F401
    import warnings  # noqa: F401

    import numpy
    import numpy.lib.stride_tricks  # noqa: F401
    import numpy.ma  # noqa: F401

    import bnorm  # noqa: F401
    import bnorm.functional  # noqa: F401

    numpy.random.default_rng(0).standard_normal(3)
    _subclass()
    bnorm.BatchNorm1d(2)(numpy.ones((2, 2), numpy.float32))
    gc.collect()
    gc.freeze()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    timeout = float(os.environ.get("BNORM_FUZZ_TIMEOUT", "20"))
    err = tempfile.TemporaryFile()
    while True:
        header = stdin.read(8)
        if len(header) < 8:
            return
        case = pickle.loads(stdin.read(struct.unpack("<Q", header)[0]))
        err.seek(0)
        err.truncate()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(err.fileno(), 2)
            code = 0
            try:
                _run_child(case, w)
            except BaseException:
                code = 3
            os._exit(code)
        os.close(w)
        chunks, deadline, hung = [], time.monotonic() + timeout, False
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        result = pickle.loads(data[8:]) if len(data) >= 8 and len(data) - 8 == struct.unpack("<Q", data[:8])[0] else None
        err.seek(0)
        stderr = err.read()[-6000:].decode(errors="replace")
        if os.WIFSIGNALED(status):
            died = f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
        elif os.WEXITSTATUS(status) != 0:
            died = f"exited with status {os.WEXITSTATUS(status)}"
        else:
            died = None
        reply = pickle.dumps({"result": result, "hung": hung, "died": died, "stderr": stderr})
        stdout.write(struct.pack("<Q", len(reply)) + reply)
        stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
    sys.exit(0)


# =====================================================================================
# The pytest side: strategies for programs, the server connection, the tests.
# =====================================================================================

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SCALE = float(os.environ.get("BNORM_FUZZ_SCALE", "1"))
STATS = collections.Counter()
OUTCOMES = collections.Counter()


MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


class Server:
    """The fuzz server process; restarted if it ever dies itself."""

    def __init__(self):
        self.proc = None

    def start(self):
        import bnorm

        # the server imports the bnorm these tests import (an in-place build or an installed one)
        beside = os.path.dirname(os.path.dirname(os.path.abspath(bnorm.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [beside, os.environ.get("PYTHONPATH")])),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", PYTHONHASHSEED="0")
        if "asan" not in env.get("LD_PRELOAD", "") and os.path.exists(MALLOC_DEBUG):
            # glibc's checking malloc: a write past the end of a heap block aborts when it is freed
            env["LD_PRELOAD"] = " ".join(filter(None, [MALLOC_DEBUG, env.get("LD_PRELOAD")]))
            env["MALLOC_CHECK_"] = "3"
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=beside)

    def run(self, case):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        data = pickle.dumps(case)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            header = self._read(8)
            reply = pickle.loads(self._read(struct.unpack("<Q", header)[0]))
        except (OSError, EOFError, struct.error) as exc:
            self.stop()
            raise AssertionError(f"the fuzz server died ({exc}) while running {case!r}")
        return reply

    def _read(self, n):
        timeout = 4 * float(os.environ.get("BNORM_FUZZ_TIMEOUT", "20")) + 30
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            if not select.select([self.proc.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise EOFError("no reply from the fuzz server")
            chunk = os.read(self.proc.stdout.fileno(), n - len(out))
            if not chunk:
                raise EOFError("the fuzz server closed its output")
            out += chunk
        return out

    def stop(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


class _Summary:
    """Prints the fuzzing figures in pytest's terminal summary (whatever the capture mode)."""

    def __init__(self):
        self.lines = []

    def pytest_terminal_summary(self, terminalreporter):
        for line in self.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def server(request, record_testsuite_property):
    summary = _Summary()
    request.config.pluginmanager.register(summary, "bnorm-fuzz-summary")
    srv = Server()
    srv.start()
    start = time.monotonic()
    yield srv
    srv.stop()
    elapsed = time.monotonic() - start
    outcomes = ", ".join(f"{k} {v}" for k, v in OUTCOMES.most_common())
    summary.lines.append(f"API fuzzing: {STATS['programs']} programs, {STATS['calls']} API calls in {elapsed:.1f} s, "
                         f"each program in its own child process (outcomes: {outcomes})")
    record_testsuite_property("fuzz_programs", STATS["programs"])
    record_testsuite_property("fuzz_calls", STATS["calls"])


def run_program(server, ops, seed=0):
    case = {"ops": ops, "seed": seed}
    reply = server.run(case)
    STATS["programs"] += 1
    result = reply["result"]
    where = reply["stderr"].strip().splitlines()
    last_op = next((line for line in reversed(where) if line.startswith("# op ")), "(before the first op)")
    if reply["hung"]:
        raise AssertionError(f"HANG (no result within the timeout) at {last_op}\nprogram: {ops!r}")
    if reply["died"]:
        raise AssertionError(f"CRASH: the child was {reply['died']} at {last_op}\nprogram: {ops!r}\n"
                             f"stderr:\n{reply['stderr'][-4000:]}")
    if result is None:
        raise AssertionError(f"no result from the child\nprogram: {ops!r}\nstderr:\n{reply['stderr']}")
    if "internal" in result:
        raise AssertionError(f"fuzzer error:\n{result['internal']}\nprogram: {ops!r}")
    STATS["calls"] += result["calls"]
    for outcome in result["outcomes"]:
        OUTCOMES[outcome[1]] += 1
    assert not result["problems"], "\n".join(result["problems"]) + f"\nprogram: {ops!r}"


# ---- strategies: recipes ----

CLASSES = {"BatchNorm1d": (2, 3), "BatchNorm2d": (4, 4), "BatchNorm3d": (5, 5)}

literals = st.one_of(
    st.sampled_from(WEIRD_LITERALS),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
).map(lambda v: ("lit", v))

scalars = st.tuples(st.just("scalar"), st.sampled_from(["float32", "float64", "float16", "int64", "int8", "bool",
                                                        "complex128", "uint64"]),
                    st.sampled_from([0, 1, 2, -1, 3.5, NAN, INF, 1e-5, 2**40]))


def _shape(n, c, spatial, rank):
    if rank <= 2:
        return (n, c)[:rank]
    return (n, c) + (tuple(spatial) + (2,) * rank)[: rank - 2]


@functools.lru_cache(maxsize=None)
def shapes_near(ndim_range, channels):
    """Mostly valid (N, C, *spatial) shapes, sometimes a wrong rank, channel count or an empty axis."""
    lo, hi = ndim_range
    return st.builds(
        _shape,
        st.integers(0, 4) | st.sampled_from([2, 3]),                             # N
        st.sampled_from([channels] * 4 + [channels + 1, 1, 0]),                  # C
        st.lists(st.integers(0, 4) | st.sampled_from([1, 3, 5]), max_size=3),   # spatial sizes
        st.integers(lo, hi) | st.integers(lo, hi) | st.integers(0, 6),           # rank
    )


@functools.lru_cache(maxsize=None)
def arrays(ndim_range, channels, dtypes=None):
    return st.tuples(
        st.just("array"),
        st.sampled_from(dtypes) if dtypes else st.sampled_from(["float32"] * 6 + ["float64"] * 3 + DTYPES),
        shapes_near(ndim_range, channels),
        st.sampled_from(LAYOUTS),
        st.sampled_from(FILLS),
    )


@functools.lru_cache(maxsize=None)
def param_arrays(channels, dtypes=("float32", "float64", "float16")):
    return st.tuples(st.just("array"), st.sampled_from(list(dtypes) + ["float32", "int64", "object", ">f4"]),
                     st.sampled_from([(channels,)] * 6 + [(channels + 1,), (), (0,), (1, channels), (channels, 1)]),
                     st.sampled_from(["c"] * 6 + ["strided", "reversed", "readonly", "unaligned", "byteswapped",
                                                  "broadcast", "broadcast_writeable", "list", "masked", "view",
                                                  "zero_d_item"]),
                     st.sampled_from(FILLS))


huge_views = st.tuples(st.just("huge_view"), st.sampled_from(["float32", "float64"]),
                       st.lists(st.sampled_from([1, 2, 3, 2**16, 2**20, 2**31, 2**40, 2**62]), min_size=2,
                                max_size=5))


@functools.lru_cache(maxsize=None)
def values(ndim_range, channels, dtypes=None):
    """Anything: mostly arrays near what the call wants, references, literals and oddities."""
    return st.one_of(
        arrays(ndim_range, channels, dtypes),
        arrays(ndim_range, channels, dtypes),
        literals,
        scalars,
        st.just(("object",)),
        st.tuples(st.just("ns"), st.sampled_from(["x", "y", "dy", "dx", "base", "save_mean", "save_invstd",
                                                  "state_dict"])),
        st.tuples(st.just("attr"), st.integers(0, 2), st.sampled_from(["gamma", "beta", "running_mean", "running_var",
                                                                         "grad_gamma"])),
        st.tuples(st.just("module"), st.integers(0, 2)),
        huge_views,
    )


@functools.lru_cache(maxsize=None)
def out_kwargs(ndim_range, channels):
    return st.one_of(
        st.just({}),
        st.just({}),
        st.builds(lambda v: {"out": v}, st.one_of(
            arrays(ndim_range, channels),
            st.tuples(st.just("ns"), st.sampled_from(["x", "y", "dy", "dx", "base"])),
            literals,
        )),
        st.builds(lambda v: {"not_a_keyword": v}, literals),
    )


CONSTRUCTOR_OPTIONS = {
    "eps": st.one_of(st.sampled_from([("lit", 1e-5), ("lit", 1e-3), ("lit", 0.5)]), literals, scalars),
    "momentum": st.one_of(st.sampled_from([("lit", 0.1), ("lit", None), ("lit", 0.0), ("lit", 1.0)]), literals,
                          scalars),
    "affine": st.one_of(st.sampled_from([("lit", True), ("lit", False)]), literals, arrays((1, 2), 2)),
    "track_running_stats": st.one_of(st.sampled_from([("lit", True), ("lit", False)]), literals),
    "dtype": st.one_of(st.sampled_from([("lit", v) for v in ("float32", "float64", "float16", "f4", "<f8", ">f4", "d",
                                                              "int32", "O", "c8", "U3", "V4", "", "datetime64",
                                                              None)]),
                       literals, st.just(("lit", [("a", "f4")]))),
    "activation": st.one_of(st.sampled_from([("lit", None), ("lit", "relu"), ("lit", "ReLU"), ("lit", "relu "),
                                             ("lit", b"relu"), ("lit", "gelu")]), literals),
    "not_an_option": literals,
}
NUM_FEATURES = st.one_of(
    st.sampled_from([("lit", v) for v in (0, -1, -2**63, 2**31, 2**62, 2**63 - 1, 2**63, 6148914691236517206, 1 << 40)]),
    literals, scalars)


@st.composite
def constructor_ops(draw, cls=None, channels=None):
    cls = cls or draw(st.sampled_from(sorted(CLASSES)))
    channels = channels if channels is not None else draw(st.integers(1, 5))
    num_features = ("lit", channels) if draw(st.integers(0, 2)) else draw(NUM_FEATURES)
    good = draw(st.booleans())
    chosen = draw(st.lists(st.sampled_from(sorted(CONSTRUCTOR_OPTIONS)), unique=True, max_size=4))
    kwargs = {}
    for key in chosen:
        if key == "not_an_option" and good:
            continue
        kwargs[key] = draw(CONSTRUCTOR_OPTIONS[key])
    args = [num_features]
    if draw(st.integers(0, 4)) == 0:  # positional options, sometimes too many
        args += [draw(literals) for _ in range(draw(st.integers(1, 7)))]
        kwargs = {}
    return ("construct", cls, args, kwargs)


def good_arrays(cls, channels, dtype):
    """Valid inputs for the module: right dtype, rank and channel count, any layout and fill."""
    lo, hi = CLASSES[cls]
    shapes = st.builds(lambda n, rank, spatial: (n, channels) + (tuple(spatial) + (2,) * 3)[: rank - 2],
                       st.sampled_from([2, 3, 4, 1, 0]), st.integers(lo, hi),
                       st.lists(st.sampled_from([1, 2, 3, 4, 0]), max_size=3))
    return st.tuples(st.just("array"), st.just(dtype), shapes,
                     st.sampled_from(["c", "c", "channels_last", "channels_last", "strided", "f", "reversed",
                                      "unaligned", "byteswapped", "readonly", "broadcast", "view", "masked"]),
                     st.sampled_from(FILLS))


LOAD_KEYS = st.sampled_from(["weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                             "num_batches_tracked", "extra", "running_mean "])
MODULE_KINDS = (["forward"] * 6 + ["call"] * 2 + ["backward"] * 5 +
                ["train", "eval", "state_dict", "load_state_dict", "load_state_dict", "setattr", "setattr", "setattr",
                 "delattr", "getattr", "copy", "fold"])


@functools.lru_cache(maxsize=None)
def module_ops(cls, channels, dtype, n_modules=2, mutations=False):
    nd = CLASSES[cls]
    good = good_arrays(cls, channels, dtype)
    any_value = values(nd, channels)
    m = st.integers(0, n_modules - 1)
    kinds = MODULE_KINDS + (["mutate"] * 6 if mutations else [])
    load_values = st.one_of(
        param_arrays(channels, ("float32", "float64", "float16", "int64", "bool", "uint8", "complex64", "U3")),
        st.tuples(st.just("scalar"), st.sampled_from(["int64", "float64", "uint64"]),
                  st.sampled_from([0, 5, -1, NAN, INF, 2.5, 2**63 - 1, 2**64 - 1])),
        literals)
    edits = st.lists(st.one_of(st.tuples(st.just("drop"), st.integers(0, 4)),
                               st.tuples(st.just("set"), LOAD_KEYS, load_values),
                               st.tuples(st.just("set"), LOAD_KEYS, load_values)), max_size=4)
    setattr_values = {
        "array": st.one_of(param_arrays(channels), param_arrays(channels), values((1, 2), channels),
                           st.tuples(st.just("attr"), st.integers(0, 2), st.sampled_from(
                               ["gamma", "beta", "running_mean", "running_var"]))),
        "num_batches_tracked": st.one_of(st.integers(-2, 2**63 + 2).map(lambda v: ("lit", v)),
                                         st.sampled_from([("lit", 2**63 - 1), ("lit", 2**63 - 2)]), scalars, literals,
                                         param_arrays(1)),
        "other": values((1, 2), channels),
    }
    by_kind = {
        "forward": st.tuples(st.just("forward"), m, st.one_of(good, good, good, any_value), out_kwargs(nd, channels)),
        "call": st.tuples(st.just("call"), m, st.one_of(good, good, any_value), out_kwargs(nd, channels)),
        "backward": st.tuples(st.just("backward"), m,
                              st.one_of(good, good, st.tuples(st.just("ns"), st.sampled_from(["x", "y", "dx"])),
                                        any_value),
                              out_kwargs(nd, channels)),
        "train": st.tuples(st.just("train"), m,
                           st.lists(st.one_of(literals, arrays((1, 1), 1), st.just(("lit", False))), max_size=2),
                           st.one_of(st.just({}), st.builds(lambda v: {"mode": v}, literals),
                                     st.builds(lambda v: {"bad": v}, literals))),
        "eval": st.tuples(st.just("eval"), m, st.lists(literals, max_size=1), st.just({})),
        "state_dict": st.tuples(st.just("state_dict"), m, st.lists(literals, max_size=1)),
        "load_state_dict": st.tuples(
            st.just("load_state_dict"), m,
            st.one_of(st.tuples(st.just("state_dict"), st.integers(0, 2), edits),
                      st.tuples(st.just("state_dict"), st.integers(0, 2), edits), literals),
            st.one_of(st.just({}), st.builds(lambda v: {"strict": v}, literals))),
        "setattr": st.one_of(*[st.tuples(st.just("setattr"), m, st.just(attr), setattr_values[
            "array" if attr in ("gamma", "beta", "weight", "bias", "running_mean", "running_var") else
            attr if attr == "num_batches_tracked" else "other"]) for attr in MODULE_ATTRS * 2 + READONLY_ATTRS]),
        "delattr": st.tuples(st.just("delattr"), m, st.sampled_from(MODULE_ATTRS + READONLY_ATTRS)),
        "getattr": st.tuples(st.just("getattr"), m, st.sampled_from(MODULE_ATTRS + READONLY_ATTRS)),
        "copy": st.tuples(st.just("copy"), m, st.sampled_from(["copy", "deepcopy", "pickle"])),
        "fold": st.tuples(st.just("fold"), m, st.lists(st.one_of(
            st.tuples(st.just("array"), st.sampled_from(["float32", "float64", "float16", "int64", "object"]),
                      st.sampled_from([(channels, 3, 2, 2), (channels, 4), (channels,), (channels + 1, 2), ()]),
                      st.sampled_from(["c", "c", "strided", "f", "broadcast", "list"]), st.sampled_from(FILLS)),
            param_arrays(channels), literals), min_size=0, max_size=3)),
        "mutate": st.tuples(st.just("mutate"),
                            st.one_of(st.tuples(st.just("attr"), m, st.sampled_from(
                                ["gamma", "beta", "running_mean", "running_var"])),
                                      st.tuples(st.just("ns"), st.sampled_from(["x", "dy", "y", "base", "dx"]))),
                            st.sampled_from(MUTATIONS)),
    }
    return st.sampled_from(kinds).flatmap(lambda kind: by_kind[kind])


MODULE_CHOICES = {key: st.sampled_from(choices) for key, choices in (
    ("affine", [True, True, False]), ("track_running_stats", [True, True, False]),
    ("momentum", [0.1, 0.1, None, 0.0, 1.0]), ("eps", [1e-5, 1e-5, 0.5]), ("activation", [None, None, "relu"]))}
WARM_LAYOUTS = st.sampled_from(["c", "channels_last", "strided"])


@st.composite
def module_programs(draw, mutations=False):
    cls = draw(st.sampled_from(sorted(CLASSES)))
    channels = draw(st.integers(1, 5) | st.sampled_from([16, 64]) if mutations else st.integers(1, 5))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16"]))
    construct = []
    for _ in range(draw(st.integers(1, 2))):
        kwargs = {"dtype": ("lit", dtype)}
        for key, choices in MODULE_CHOICES.items():
            kwargs[key] = ("lit", draw(choices))
        construct.append(("construct", cls, [("lit", channels)], kwargs))
    nd = CLASSES[cls]
    # a first forward and backward on a valid input of the module's dtype, so later ops meet real state
    shape = (3, channels) + (2,) * (nd[0] - 2)
    warm = [("forward", 0, ("array", dtype, shape, draw(WARM_LAYOUTS), "normal"), {}),
            ("backward", 0, ("array", dtype, shape, "c", "normal"), {})]
    ops = draw(st.lists(module_ops(cls, channels, dtype, len(construct), mutations), min_size=3, max_size=14))
    if mutations:
        # mutate, then use: an array changed between two calls, then the next forward and backward
        good = good_arrays(cls, channels, dtype)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(ops)))
            mutate = draw(module_ops(cls, channels, dtype, len(construct), True).filter(lambda op: op[0] == "mutate"))
            ops[at:at] = [mutate, ("forward", 0, draw(good), {}), ("backward", 0, draw(good), {})]
    return construct + warm + ops


@functools.lru_cache(maxsize=None)
def _functional_parts(channels, dtype):
    nd = (2, 5)
    stats = st.one_of(param_arrays(channels, (dtype,)), st.just(("lit", None)), literals,
                      st.tuples(st.just("ns"), st.sampled_from(["x", "save_mean", "y"])))
    mine = arrays(nd, channels, (dtype,))
    return {
        "x": st.one_of(mine, mine, values(nd, channels)),
        "running_mean": stats, "running_var": stats, "weight": stats, "bias": stats,
        "training": st.one_of(st.sampled_from([("lit", True), ("lit", False)]), literals),
        "momentum": st.one_of(st.sampled_from([("lit", 0.1), ("lit", 1.0), ("lit", 0.0)]), literals),
        "eps": st.one_of(st.sampled_from([("lit", 1e-5), ("lit", 0.1)]), literals),
        "out": st.one_of(mine, st.tuples(st.just("ns"), st.sampled_from(["x", "y"])), literals),
        "dy": st.one_of(mine, st.tuples(st.just("ns"), st.sampled_from(["y", "x"])), values(nd, channels)),
        "b_x": st.one_of(st.just(("ns", "x")), st.just(("ns", "x")), values(nd, channels)),
        "save_mean": st.one_of(st.just(("ns", "save_mean")), st.just(("ns", "save_mean")), param_arrays(channels),
                               literals),
        "save_invstd": st.one_of(st.just(("ns", "save_invstd")), st.just(("ns", "save_invstd")),
                                 param_arrays(channels), literals),
        "b_out": st.one_of(mine, st.just(("ns", "x")), st.just(("ns", "y")), literals),
        "activation": st.one_of(st.sampled_from([("lit", None), ("lit", "relu"), ("lit", "relu")]), literals),
    }


FUNCTIONAL_NAMES = ["running_mean", "running_var", "weight", "bias", "training", "momentum", "eps", "out"]
FUNCTIONAL_KEYWORDS = FUNCTIONAL_NAMES + ["activation", "activation"]


@st.composite
def functional_ops(draw):
    channels = draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(["float32", "float32", "float64", "float16"]))
    parts = _functional_parts(channels, dtype)
    x = draw(parts["x"])
    if draw(st.booleans()):  # positional
        args = [x] + [draw(parts[k]) for k in FUNCTIONAL_NAMES[: draw(st.integers(0, 8))]]
        kwargs = {}
    else:
        args = [x]
        chosen = draw(st.lists(st.sampled_from(FUNCTIONAL_KEYWORDS), unique=True, max_size=5))
        kwargs = {k: draw(parts[k]) for k in chosen}
        if draw(st.integers(0, 9)) == 0:
            kwargs["bogus"] = draw(literals)
    forward = ("batch_norm", args, kwargs)
    # backward: mostly the results of that forward, sometimes anything
    bargs = [draw(parts["dy"]), draw(parts["b_x"]), draw(parts["save_mean"]), draw(parts["save_invstd"])]
    bkwargs = {}
    if draw(st.booleans()):
        bkwargs["weight"] = draw(parts["weight"])
    if draw(st.booleans()):
        bkwargs["training"] = draw(parts["training"])
    if draw(st.booleans()):
        bkwargs["out"] = draw(parts["b_out"])
    if draw(st.booleans()):
        bkwargs["bias"] = draw(parts["bias"])
    if "activation" in kwargs or draw(st.integers(0, 3)) == 0:
        bkwargs["activation"] = kwargs.get("activation") or draw(parts["activation"])
    if draw(st.integers(0, 3)) == 0:
        bargs = bargs[: draw(st.integers(0, 4))]
    return [forward, ("batch_norm_backward", bargs, bkwargs)]


def fuzz_settings(examples):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))


# ---- the tests ----

@fuzz_settings(600)
@given(ops=st.lists(constructor_ops(), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_constructors(server, ops, seed):
    """Any constructor arguments: a module whose attributes match them, or an allowed exception."""
    # follow each construction with calls that read the whole state
    program = []
    for op in ops:
        program += [op, ("getattr", -1, "gamma"), ("state_dict", -1, []), ("copy", -1, "deepcopy")]
    run_program(server, program, seed)


# Regression examples (always run, before the generated ones): cases fuzzing found once.
_BN3 = ("construct", "BatchNorm1d", [("lit", 3)], {"momentum": ("lit", None)})
_X3 = ("array", "float32", (4, 3), "c", "normal")


@fuzz_settings(900)
@given(ops=module_programs(), seed=st.integers(0, 2**32 - 1))
@example(ops=[_BN3, ("setattr", 0, "num_batches_tracked", ("lit", 2**63 - 1)), ("forward", 0, _X3, {})],
         seed=0).via("num_batches_tracked at its maximum, then a training forward")
@example(ops=[_BN3, ("forward", 0, _X3, {}),
              ("load_state_dict", 0, ("state_dict", 0, [("set", "weight", ("array", "float32", (3,), "c", "normal")),
                                                        ("set", "num_batches_tracked", ("scalar", "int64", -1))]), {})],
         seed=0).via("load_state_dict failing on its last key")
def test_module_calls(server, ops, seed):
    """forward, backward, train, eval, state_dict, load_state_dict and attribute
    assignments with arbitrary arguments, on one or two modules."""
    run_program(server, ops, seed)


@fuzz_settings(500)
@given(ops=module_programs(mutations=True), seed=st.integers(0, 2**32 - 1))
@example(ops=[("construct", "BatchNorm2d", [("lit", 64)], {}), ("mutate", ("attr", 0, "running_mean"), "resize_smaller"),
              ("forward", 0, ("array", "float32", (3, 64, 2, 2), "c", "normal"), {})],
         seed=0).via("the module's running_mean resized by the user, then a forward")
def test_arrays_modified_or_resized_between_calls(server, ops, seed):
    """The same calls, with inputs, outputs and the module's own arrays overwritten
    (NaN, inf), made read-only, reshaped or resized (ndarray.resize, which NumPy
    allows on an array nobody else references) between the calls."""
    run_program(server, ops, seed)


@fuzz_settings(700)
@given(ops=st.lists(functional_ops(), min_size=1, max_size=3).map(lambda l: [op for pair in l for op in pair]),
       seed=st.integers(0, 2**32 - 1))
@example(ops=[("batch_norm", [("array", "float32", (2, 0), "c", "normal")], {})],
         seed=0).via("zero channels, two rows")
def test_functional(server, ops, seed):
    """bnorm.functional.batch_norm and batch_norm_backward with arbitrary arguments."""
    run_program(server, ops, seed)


@fuzz_settings(60)
@given(values=st.lists(st.one_of(st.integers(-3, 6).map(lambda v: ("lit", v)), literals, scalars,
                                 st.sampled_from([("lit", 1024), ("lit", 1025), ("lit", 2**31),
                                                  ("array", "int64", (), "c", "ints")])),
                       min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_set_num_threads(server, values, seed):
    """set_num_threads with anything, each followed by a forward/backward big enough to use the pool."""
    ops = [("construct", "BatchNorm2d", [("lit", 4)], {})]
    for v in values:
        ops += [("set_num_threads", v),
                ("forward", 0, ("array", "float32", (4, 4, 64, 72), "c", "normal"), {}),
                ("backward", 0, ("array", "float32", (4, 4, 64, 72), "c", "normal"), {}),
                ("forward", 0, ("array", "float32", (4, 4, 64, 72), "channels_last", "normal"), {})]
    run_program(server, ops, seed)


def test_the_fuzzer_detects_crashes_wrong_exceptions_and_wrong_results(server):
    """The harness itself: a crash, an exception of another type and a result that
    differs from the formula are each a failure (and pytest survives the crash)."""
    with pytest.raises(AssertionError, match="CRASH.*SIGABRT"):
        run_program(server, [("selftest_crash",)])
    with pytest.raises(AssertionError, match="raised builtins.ZeroDivisionError"):
        run_program(server, [("selftest_raise",)])
    good = [("construct", "BatchNorm2d", [("lit", 3)], {}),
            ("forward", 0, ("array", "float32", (4, 3, 2, 2), "c", "normal"), {}),
            ("backward", 0, ("array", "float32", (4, 3, 2, 2), "c", "normal"), {})]
    run_program(server, good)
    with pytest.raises(AssertionError, match="forward output"):
        run_program(server, [("selftest_wrong_formula",)] + good)
