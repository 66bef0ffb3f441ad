"""What an allocating bnorm call costs over its out= call, and where the time goes.

    python benchmarks/alloc_cost.py [--repeat R] [--threads N] [--shapes 32x64x112x112,...]

For each shape (float32, NCHW and channels-last) and op (training forward, eval forward,
backward) three variants are timed interleaved, in a rotated order, in one process:
  recycled  bn(x) with bnorm's recycling of freed output blocks (the default);
  fresh     bn(x) with recycling off (_core._set_output_cache_limit(0)): NumPy's
            allocator, fresh pages for outputs above glibc's mmap threshold;
  out=      bn(x, out=y) into a pre-faulted array.
Each timed call follows an untimed call of the same variant, so it sees that variant's
steady state: the previous output was freed just before, as in a training loop. Besides
the median time, the minor page faults and the kernel (system) CPU time of the process
per call show the fault-and-zero cost directly; unlike times, they hardly move when
other processes load the machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Callable

import numpy as np

import bnorm
from bnorm import _core

SHAPES = ((32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 2048, 7, 7), (32, 192, 71, 71))


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def usage() -> tuple[int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_stime


def measure(variants: dict[str, tuple[Callable[[], object], int]], repeat: int) -> dict[str, dict[str, float]]:
    """{variant: median ms, faults and kernel ms per call}; each variant is (call, cache limit)."""
    names = list(variants)
    samples: dict[str, list[tuple[float, int, float]]] = {name: [] for name in names}
    for rep in range(repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            call, limit = variants[name]
            _core._set_output_cache_limit(limit)
            call()  # untimed: the steady state of this variant
            time.sleep(0.005)
            f0, s0 = usage()
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
            f1, s1 = usage()
            samples[name].append((elapsed, f1 - f0, s1 - s0))
    return {name: {"ms": statistics.median(s[0] for s in v) * 1e3,
                   "faults": statistics.median(s[1] for s in v),
                   "kernel_ms": statistics.mean(s[2] for s in v) * 1e3} for name, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", help="comma-separated NxCxHxW (default: the five of compare.py)")
    args = ap.parse_args()
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    bnorm.set_num_threads(args.threads)
    default_limit = _core._output_cache_info()["limit_bytes"]
    print("shape layout op: median ms recycled / fresh / out=; (alloc)/out= recycled, fresh; "
          "page faults per call; kernel CPU ms per call")
    for shape in shapes:
        for layout in ("NCHW", "NHWC"):
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            if layout == "NHWC":
                x = channels_last(x)
            dy = x.copy(order="K")
            out = np.zeros_like(x)
            for op in ("train", "eval", "backward"):
                bn = bnorm.BatchNorm2d(shape[1]).train(op != "eval")
                if op == "backward":
                    bn(x, out=out)
                    alloc, into = (lambda: bn.backward(dy)), (lambda: bn.backward(dy, out=out))
                else:
                    alloc, into = (lambda: bn(x)), (lambda: bn(x, out=out))
                m = measure({"recycled": (alloc, default_limit), "fresh": (alloc, 0), "out=": (into, default_limit)},
                            args.repeat)
                r, f, o = (m[k] for k in ("recycled", "fresh", "out="))
                print(f"{'x'.join(map(str, shape))} {layout} {op:8s}: {r['ms']:6.2f} / {f['ms']:6.2f} / {o['ms']:6.2f} ms;"
                      f" {r['ms'] / o['ms']:.2f}, {f['ms'] / o['ms']:.2f}; faults {r['faults']:.0f} / {f['faults']:.0f} /"
                      f" {o['faults']:.0f}; kernel {r['kernel_ms']:.2f} / {f['kernel_ms']:.2f} / {o['kernel_ms']:.2f} ms",
                      flush=True)
    _core._set_output_cache_limit(default_limit)


if __name__ == "__main__":
    main()
