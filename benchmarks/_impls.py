"""Cases, test data and the implementations compared by benchmarks/compare.py.

Every implementation of an operation is a zero-argument callable working on
buffers prepared here, so the timing loop measures only the library call.
NumPy and torch share memory (torch.from_numpy): every library reads the same
bytes at the same addresses.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

EPS = 1e-5
MOMENTUM = 0.1

OPS = ("train_fwd", "eval_fwd", "backward")
MODULE_OP = "module_fwd_bwd"
OP_LABELS = {
    "train_fwd": "train fwd",
    "eval_fwd": "eval fwd",
    "backward": "backward",
    MODULE_OP: "module fwd+bwd",
}
# Minimal memory traffic of each operation, in multiples of the tensor size:
# forward reads x and writes y; backward reads x and dy and writes dx.
TRAFFIC = {"train_fwd": 2, "eval_fwd": 2, "backward": 3, MODULE_OP: 5}

# Relative tolerance (max |got - torch| / max |torch|) of the correctness
# check. Loose enough for float32 summation-order differences over ~10^5
# values, far below what a missing term or wrong statistic produces (the test
# data make every term of the formulas O(1), see Problem).
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10,
             # float16 outputs round to 11 bits: libraries computing in float may differ by an ulp
             np.dtype(np.float16): 2e-3}


# --------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class CaseSpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    channels_last: bool = False  # memory NHWC (NDHWC, (N, L, C)), logical shape NCHW
    group: str | None = None  # the targets are judged per group, on its five shapes
    small: bool = False  # also time module forward+backward against torch autograd

    @property
    def label(self) -> str:
        return "×".join(map(str, self.shape)) + (" NHWC" if self.channels_last else "")

    @property
    def param_dtype(self) -> np.dtype:
        """float16 modules keep parameters and statistics in float32, as torch does."""
        return np.dtype(np.float32) if self.dtype == np.float16 else self.dtype


RESNET_SHAPES = {"64": (32, 64, 112, 112), "256": (32, 256, 56, 56), "512": (32, 512, 28, 28),
                 "2048": (32, 2048, 7, 7)}
# A fifth shape, from another network, so that the kernels are not tuned to ResNet-50's four:
# Inception-v3's Conv2d_4a_3x3 batch norm (299x299 images), 192 channels at 71x71. Its 5041
# values a row are odd, so every NCHW row ends in a vector tail on a DRAM-sized tensor (124 MB
# in float32, 62 MB in float16; of the ResNet shapes only the cache-sized 7x7 has tails), and
# 192 channels are not a power of two.
OTHER_SHAPES = {"inception-192": (32, 192, 71, 71)}
GROUP_SHAPES = {**{f"resnet-{c}": shape for c, shape in RESNET_SHAPES.items()}, **OTHER_SHAPES}
# Target groups: (name suffix, dtype, channels-last). Every group has the same targets.
GROUPS = (("", np.float32, False), ("-nhwc", np.float32, True), ("-f16", np.float16, False),
          ("-f16-nhwc", np.float16, True))


def group_name(dtype, channels_last: bool) -> str:
    return f"{np.dtype(dtype).name} {'channels-last' if channels_last else 'NCHW'}"


DEFAULT_CASES = tuple(
    CaseSpec(f"{name}{suffix}", shape, np.dtype(dtype), channels_last=cl, group=group_name(dtype, cl))
    for suffix, dtype, cl in GROUPS for name, shape in GROUP_SHAPES.items()
) + (
    CaseSpec("small", (8, 16, 16, 16), np.dtype(np.float32), small=True),
    CaseSpec("resnet-256-f64", (32, 256, 56, 56), np.dtype(np.float64)),
)
CASES_BY_NAME = {c.name: c for c in DEFAULT_CASES}
# A group's four ResNet-50 shapes by one name: resnet, resnet-nhwc, resnet-f16, resnet-f16-nhwc;
# and all five by the group's dtype and layout: float32, float32-nhwc, float16, float16-nhwc
CASE_GROUPS = {f"resnet{suffix}": [CASES_BY_NAME[f"resnet-{c}{suffix}"] for c in RESNET_SHAPES]
               for suffix, _, _ in GROUPS}
CASE_GROUPS.update({np.dtype(dtype).name + ("-nhwc" if cl else ""): [CASES_BY_NAME[f"{name}{suffix}"]
                                                                     for name in GROUP_SHAPES]
                    for suffix, dtype, cl in GROUPS})
SMOKE_CASE = "small"  # --smoke: this case only


def parse_cases(text: str | None) -> list[CaseSpec]:
    """'resnet-256,small', groups such as 'resnet-nhwc', or custom shapes such as
    '16x32x8x8:float64' or '16x32x8x8:float16:nhwc'."""
    if not text:
        return list(DEFAULT_CASES)
    specs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if item in CASES_BY_NAME:
            specs.append(CASES_BY_NAME[item])
            continue
        if item in CASE_GROUPS:
            specs += CASE_GROUPS[item]
            continue
        m = re.fullmatch(r"(\d+(?:x\d+){1,4})(?::(float16|float32|float64))?(:nhwc)?", item)
        if not m:
            known = ", ".join(list(CASES_BY_NAME) + list(CASE_GROUPS))
            raise ValueError(f"unknown case {item!r}; known: {known}; or a shape like 8x16x32x32[:float64][:nhwc]")
        shape = tuple(int(d) for d in m.group(1).split("x"))
        dtype = np.dtype(m.group(2) or "float32")
        specs.append(CaseSpec(item, shape, dtype, channels_last=bool(m.group(3)) and len(shape) > 2,
                              small=math.prod(shape) <= 1 << 16))
    return specs


# --------------------------------------------------------------------------
# Data


def touched_empty_like(a: np.ndarray) -> np.ndarray:
    """An output buffer whose pages are already mapped.

    np.zeros may get lazily zeroed pages from calloc/mmap; the first write to
    each page would then page-fault inside the timed call.
    """
    out = np.empty_like(a)
    out.fill(0)
    return out


def in_layout(a: np.ndarray, dtype, channels_last: bool) -> np.ndarray:
    """`a` (logical N, C, ...) as `dtype` in contiguous NCHW or channels-last memory."""
    if not channels_last or a.ndim < 3:
        return np.ascontiguousarray(a, dtype=dtype)
    to_last = (0,) + tuple(range(2, a.ndim)) + (1,)
    memory = np.ascontiguousarray(a.transpose(to_last), dtype=dtype)
    return memory.transpose(np.argsort(to_last))


class Problem:
    """Input, upstream gradient and parameters shared by all implementations."""

    def __init__(self, spec: CaseSpec, seed: int = 0):
        self.spec = spec
        shape, dtype, pdtype = spec.shape, spec.dtype, spec.param_dtype
        rng = np.random.default_rng(seed)
        c = shape[1]
        self.channels = c
        self.bshape = (1, c) + (1,) * (len(shape) - 2)  # broadcasts per-channel values
        self.axes = (0,) + tuple(range(2, len(shape)))  # reduction axes
        self.reduction_size = math.prod(shape) // c

        # Per-channel offsets and scales, and dy correlated with x: then the
        # mean, the variance and the dbeta/M and x̂·dgamma/M terms of dx are
        # all O(1), so the correctness check notices any one of them missing.
        shift = rng.uniform(-2.0, 2.0, c).astype(pdtype)
        scale = rng.uniform(0.5, 2.0, c).astype(pdtype)
        x = rng.standard_normal(shape, dtype=pdtype)  # NumPy draws no float16
        x *= scale.reshape(self.bshape)
        x += shift.reshape(self.bshape)
        dy = rng.standard_normal(shape, dtype=pdtype)
        dy *= 0.5
        dy += pdtype.type(0.3) * x
        dy += pdtype.type(0.1)
        self.x, self.dy = in_layout(x, dtype, spec.channels_last), in_layout(dy, dtype, spec.channels_last)

        self.gamma = rng.uniform(0.5, 1.5, c).astype(pdtype)
        self.beta = rng.uniform(-0.5, 0.5, c).astype(pdtype)
        self.running_mean = (shift + rng.normal(0.0, 0.1, c)).astype(pdtype)
        self.running_var = (scale.astype(np.float64) ** 2 * rng.uniform(0.8, 1.2, c)).astype(pdtype)

        # One preallocated output shared by every out= call of every library
        # (and the copy): the same destination addresses for all, and a case
        # needs 3 tensors of memory instead of 10. Safe because the correctness
        # check compares each result right after the call that produced it.
        self.out = touched_empty_like(self.x)

    @property
    def nbytes(self) -> int:
        return self.x.nbytes


@dataclass
class Impl:
    name: str
    fn: Callable[[], object]  # the timed call
    # Turns fn's return value into the arrays compared with torch's result.
    outputs: Callable[[object], tuple] = lambda r: (r,)
    # Run once before the operation is checked and timed (e.g. bnorm's
    # backward needs a training forward on x first).
    setup: Callable[[], None] | None = None


def _np(t) -> np.ndarray:
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


# --------------------------------------------------------------------------
# PyTorch: the CPU kernels behind nn.BatchNorm, called directly


TORCH_OUT = "torch (out=)"
TORCH_ALLOC = "torch (alloc)"


def torch_impls(p: Problem) -> dict[str, list[Impl]]:
    """torch.native_batch_norm and aten::native_batch_norm_backward.

    '(alloc)' is the functional overload (fresh outputs each call, as
    nn.BatchNorm2d does); '(out=)' writes into preallocated tensors.
    native_batch_norm.out is a real out= kernel. native_batch_norm_backward.out
    is generated by torch (it computes into new tensors, then copies), so for
    backward the '(alloc)' overload is the faster one; the report compares
    bnorm with whichever torch variant is faster.
    """
    xt, dyt = torch.from_numpy(p.x), torch.from_numpy(p.dy)
    w, b = torch.from_numpy(p.gamma.copy()), torch.from_numpy(p.beta.copy())
    rm, rv = torch.from_numpy(p.running_mean.copy()), torch.from_numpy(p.running_var.copy())
    erm, erv = torch.from_numpy(p.running_mean.copy()), torch.from_numpy(p.running_var.copy())
    c, dt = p.channels, w.dtype  # float32 for float16 data
    y_out = ye_out = dx_out = torch.from_numpy(p.out)
    save_mean, save_invstd = torch.empty(c, dtype=dt), torch.empty(c, dtype=dt)
    esave_mean, esave_invstd = torch.empty(c, dtype=dt), torch.empty(c, dtype=dt)
    dw_out, db_out = torch.empty(c, dtype=dt), torch.empty(c, dtype=dt)
    # Batch statistics of x for the backward, as a training forward saves them.
    _, mean, invstd = torch.native_batch_norm(xt, w, b, None, None, True, MOMENTUM, EPS)

    nbn = torch.native_batch_norm
    nbn_out = torch.ops.aten.native_batch_norm.out
    nbn_bwd = torch.ops.aten.native_batch_norm_backward.default
    nbn_bwd_out = torch.ops.aten.native_batch_norm_backward.out
    mask = [True, True, True]

    first = lambda r: (_np(r[0]),)  # noqa: E731
    all3 = lambda r: tuple(_np(t) for t in r)  # noqa: E731
    return {
        "train_fwd": [
            Impl(TORCH_OUT, lambda: nbn_out(xt, w, b, rm, rv, True, MOMENTUM, EPS,
                                            out=y_out, save_mean=save_mean, save_invstd=save_invstd), first),
            Impl(TORCH_ALLOC, lambda: nbn(xt, w, b, rm, rv, True, MOMENTUM, EPS), first),
        ],
        "eval_fwd": [
            Impl(TORCH_OUT, lambda: nbn_out(xt, w, b, erm, erv, False, MOMENTUM, EPS,
                                            out=ye_out, save_mean=esave_mean, save_invstd=esave_invstd), first),
            Impl(TORCH_ALLOC, lambda: nbn(xt, w, b, erm, erv, False, MOMENTUM, EPS), first),
        ],
        "backward": [
            Impl(TORCH_OUT, lambda: nbn_bwd_out(dyt, xt, w, None, None, mean, invstd, True, EPS, mask,
                                                out0=dx_out, out1=dw_out, out2=db_out), all3),
            Impl(TORCH_ALLOC, lambda: nbn_bwd(dyt, xt, w, None, None, mean, invstd, True, EPS, mask), all3),
        ],
    }


# --------------------------------------------------------------------------
# Plain NumPy (single-threaded: NumPy's ufuncs and reductions do not thread)


class NumpyBatchNorm:
    """The textbook formulas with np.mean / np.var axis reductions.

    Writes into preallocated outputs where NumPy allows (out=); temporaries
    inside np.var and the backward are what plain NumPy code pays.
    """

    def __init__(self, p: Problem):
        self.p = p
        self.gamma = p.gamma.reshape(p.bshape)
        self.beta = p.beta.reshape(p.bshape)
        # Training updates these; eval uses its own copies (as torch_impls does),
        # so both see the same running statistics as torch.
        self.running_mean = p.running_mean.copy()
        self.running_var = p.running_var.copy()
        self.eval_mean = p.running_mean.reshape(p.bshape)
        self.eval_var = p.running_var.reshape(p.bshape)
        self.y = self.ye = self.dx = p.out
        self.mean = self.invstd = None  # saved by train_forward for backward

    def train_forward(self):
        p, x, y = self.p, self.p.x, self.y
        # statistics in the parameters' dtype: float32 for float16 data
        mean = x.mean(axis=p.axes, keepdims=True, dtype=p.spec.param_dtype)
        var = x.var(axis=p.axes, keepdims=True, dtype=p.spec.param_dtype)
        m, n = MOMENTUM, p.reduction_size
        self.running_mean = (1 - m) * self.running_mean + m * mean.ravel()
        self.running_var = (1 - m) * self.running_var + m * var.ravel() * (n / (n - 1))
        self.mean, self.invstd = mean, 1 / np.sqrt(var + EPS)
        scale = self.gamma * self.invstd
        np.subtract(x, mean, out=y)
        np.multiply(y, scale, out=y)
        np.add(y, self.beta, out=y)
        return y

    def eval_forward(self):
        p, y = self.p, self.ye
        scale = self.gamma / np.sqrt(self.eval_var + EPS)
        shift = self.beta - self.eval_mean * scale
        np.multiply(p.x, scale, out=y)
        np.add(y, shift, out=y)
        return y

    def backward(self):
        p, x, dy, dx = self.p, self.p.x, self.p.dy, self.dx
        n = p.reduction_size
        xhat = (x - self.mean) * self.invstd
        dbeta = dy.sum(axis=p.axes, keepdims=True, dtype=p.spec.param_dtype)
        dgamma = (dy * xhat).sum(axis=p.axes, keepdims=True)
        # dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M)
        np.multiply(xhat, dgamma / n, out=xhat)
        np.subtract(dy, xhat, out=dx)
        np.subtract(dx, dbeta / n, out=dx)
        np.multiply(dx, self.gamma * self.invstd, out=dx)
        return dx, dgamma.ravel(), dbeta.ravel()


def numpy_impls(p: Problem) -> dict[str, list[Impl]]:
    nb = NumpyBatchNorm(p)
    return {
        "train_fwd": [Impl("numpy", nb.train_forward)],
        "eval_fwd": [Impl("numpy", nb.eval_forward)],
        "backward": [Impl("numpy", nb.backward, lambda r: r, setup=nb.train_forward)],
    }


# --------------------------------------------------------------------------
# bnorm


BNORM_OUT = "bnorm (out=)"
BNORM_ALLOC = "bnorm (alloc)"


def _bnorm_module(bnorm, p: Problem, training: bool):
    cls = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[len(p.spec.shape)]
    bn = getattr(bnorm, cls)(p.channels, eps=EPS, momentum=MOMENTUM, dtype=p.spec.dtype)
    bn.gamma[...] = p.gamma
    bn.beta[...] = p.beta
    bn.running_mean[...] = p.running_mean
    bn.running_var[...] = p.running_var
    return bn.train(training)


def bnorm_impls(bnorm, p: Problem) -> dict[str, list[Impl]]:
    """The module API: bn(x), bn(x, out=y), bn.backward(dy[, out=dx])."""
    x, dy = p.x, p.dy
    train, ev = _bnorm_module(bnorm, p, True), _bnorm_module(bnorm, p, False)
    y = ye = dx = p.out
    grads = lambda dx_: (dx_, train.grad_gamma, train.grad_beta)  # noqa: E731
    # backward differentiates the most recent forward: make sure that was on x.
    forward_on_x = lambda: train(x, out=y)  # noqa: E731
    return {
        "train_fwd": [
            Impl(BNORM_OUT, lambda: train(x, out=y)),
            Impl(BNORM_ALLOC, lambda: train(x)),
        ],
        "eval_fwd": [
            Impl(BNORM_OUT, lambda: ev(x, out=ye)),
            Impl(BNORM_ALLOC, lambda: ev(x)),
        ],
        "backward": [
            Impl(BNORM_OUT, lambda: train.backward(dy, out=dx), grads, setup=forward_on_x),
            Impl(BNORM_ALLOC, lambda: train.backward(dy), grads, setup=forward_on_x),
        ],
    }


def bnorm_running_stats_error(bnorm, p: Problem) -> float:
    """Relative error of bnorm's running-statistics update after one step."""
    bn = _bnorm_module(bnorm, p, True)
    rm, rv = torch.from_numpy(p.running_mean.copy()), torch.from_numpy(p.running_var.copy())
    torch.native_batch_norm(torch.from_numpy(p.x), None, None, rm, rv, True, MOMENTUM, EPS)
    bn(p.x)
    if bn.num_batches_tracked != 1:
        return math.inf
    return max(rel_error(bn.running_mean, rm.numpy()), rel_error(bn.running_var, rv.numpy()))


# --------------------------------------------------------------------------
# Module forward + backward (small case): per-call overhead matters here


def module_impls(bnorm, p: Problem) -> list[Impl]:
    """torch.nn.BatchNorm*d with autograd vs the bnorm module, forward then backward."""
    ndim = len(p.spec.shape)
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]
    tdtype = torch.from_numpy(p.x[:0]).dtype
    m = cls(p.channels, eps=EPS, momentum=MOMENTUM, dtype=tdtype).train()
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(p.gamma))
        m.bias.copy_(torch.from_numpy(p.beta))
        m.running_mean.copy_(torch.from_numpy(p.running_mean))
        m.running_var.copy_(torch.from_numpy(p.running_var))
    xt = torch.from_numpy(p.x).requires_grad_(True)
    dyt = torch.from_numpy(p.dy)
    params = (xt, m.weight, m.bias)

    def torch_step():
        # autograd.grad returns fresh gradients instead of accumulating into
        # .grad, i.e. what a training step sees after zero_grad(set_to_none).
        y = m(xt)
        return (y, *torch.autograd.grad(y, params, dyt))

    impls = [Impl("torch nn module + autograd", torch_step, lambda r: tuple(_np(t) for t in r))]
    if bnorm is None:
        return impls
    bn = _bnorm_module(bnorm, p, True)
    x, dy = p.x, p.dy
    y, dx = touched_empty_like(x), touched_empty_like(x)

    def bnorm_step():
        yy = bn(x)
        return yy, bn.backward(dy), bn.grad_gamma, bn.grad_beta

    def bnorm_step_out():
        bn(x, out=y)
        return y, bn.backward(dy, out=dx), bn.grad_gamma, bn.grad_beta

    impls += [Impl("bnorm module", bnorm_step, lambda r: r),
              Impl("bnorm module (out=)", bnorm_step_out, lambda r: r)]
    return impls


# --------------------------------------------------------------------------
# Memory copy of the same bytes: the bandwidth limit


# Two ways to copy at N threads; neither wins everywhere (torch's OpenMP copy
# is faster for large tensors here, np.copyto's memcpy for cache-sized ones
# and when another process competes for a core). The report takes the faster
# of the two per row: the memory limit is the best copy we can do.
COPY_TORCH = "copy (torch)"
COPY_NUMPY = "copy (numpy threads)"
COPY_METHODS = {
    COPY_TORCH: "torch Tensor.copy_ (dst.copy_(src)) with torch.set_num_threads(N)",
    COPY_NUMPY: "np.copyto on N equal contiguous chunks, one Python thread each (copyto releases the GIL)",
}


_POOLS: dict[int, ThreadPoolExecutor] = {}


class ThreadedNumpyCopy:
    def __init__(self, src: np.ndarray, dst: np.ndarray, threads: int):
        # in memory order: a view for channels-last arrays too (reshape(-1) would copy)
        s, d = src.ravel(order="K"), dst.ravel(order="K")
        if not (np.shares_memory(s, src) and np.shares_memory(d, dst)):
            raise ValueError("the copy needs arrays that are contiguous in some axis order")
        n = s.size
        bounds = [n * i // threads for i in range(threads + 1)]
        self.chunks = [(d[a:b], s[a:b]) for a, b in zip(bounds, bounds[1:])]
        # Persistent workers shared by all cases: no thread start-up in the timing.
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(max(threads - 1, 1))
        self.pool = _POOLS[threads]

    def __call__(self):
        # The calling thread does one chunk itself, the pool the others.
        futures = [self.pool.submit(np.copyto, d, s) for d, s in self.chunks[1:]]
        np.copyto(*self.chunks[0])
        for f in futures:
            f.result()


def copy_impls(p: Problem, threads: int) -> list[Impl]:
    """Copy x into a preallocated buffer (read B bytes, write B bytes), both ways."""
    src_t, dst_t = torch.from_numpy(p.x), torch.from_numpy(p.out)
    return [Impl(COPY_TORCH, lambda: dst_t.copy_(src_t)),
            Impl(COPY_NUMPY, ThreadedNumpyCopy(p.x, p.out, threads))]


# --------------------------------------------------------------------------
# Correctness


def rel_error(got, ref) -> float:
    """max |got - ref| / max |ref|, infinite for NaN, shape or dtype mismatch."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return math.inf
    if got.size == 0:
        return 0.0
    err = float(np.max(np.abs(got - ref)))
    scale = float(np.max(np.abs(ref)))
    err = err / scale if scale > 0 else err
    return err if math.isfinite(err) else math.inf


def max_rel_error(got: tuple, ref: tuple) -> float:
    if len(got) != len(ref):
        return math.inf
    return max(rel_error(g, r) for g, r in zip(got, ref))
