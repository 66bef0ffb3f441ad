"""Child side: checks of bnorm.functional.batch_norm and batch_norm_backward."""

from __future__ import annotations


class FunctionalChecks:
    """Program's checks of the functional calls (a mixin)."""

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
