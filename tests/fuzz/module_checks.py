"""Child side: checks of the results of module calls (construct, forward, backward,
fold, load_state_dict, attribute assignment)."""

from __future__ import annotations

import math


class ModuleChecks:
    """Program's checks of module calls (a mixin)."""

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
            # A (near-)constant channel's variance is known only to the rounding of its mean:
            # the float64 formula may give 1e-32 where bnorm's exact answer is 0.
            spread = var + np.finfo(np.float64).eps * (np.abs(mean) + np.sqrt(var)) ** 2
            scale_v = abs(1 - mo) * np.abs(before["running_var"]) + abs(mo) * spread * count / max(count - 1, 1) + 1e-30
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
