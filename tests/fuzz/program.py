"""Child side: one program's namespace and calls, and the invariants every module must keep."""

from __future__ import annotations

import math
import os
import pickle
import traceback

from .formulas import Formulas
from .functional_checks import FunctionalChecks
from .module_checks import ModuleChecks
from .values import ValueBuilder, _Unbuildable
from .vocabulary import ALLOWED, INF, NAN


def _exc_allowed(exc):
    return any(cls.__name__ in ALLOWED and cls.__module__ == "builtins" for cls in type(exc).__mro__)


class Program(ValueBuilder, Formulas, ModuleChecks, FunctionalChecks):
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
