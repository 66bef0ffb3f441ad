"""Child side: builds the values that recipes describe (arrays of every dtype and layout,
literals, scalars, the module's own arrays).  Runs in the forked child; imports numpy only there."""

from __future__ import annotations

import math

from .vocabulary import INF, NAN


class _Unbuildable(Exception):
    """A recipe that NumPy itself refuses (e.g. a shape too big): the op is skipped."""


def _subclass():
    import numpy as np

    class FuzzArray(np.ndarray):
        pass

    return FuzzArray


class ValueBuilder:
    """Program's value builder (a mixin: uses the program's rng, namespace and modules)."""

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
