"""Interleaved timing for benchmarks/compare.py.

All implementations of one operation are timed together: every repetition
runs each of them once, in an order rotated by one position per repetition.
Slow drift (thermal or frequency changes, other load on the machine) then
hits every implementation alike, and no implementation always runs right
after the same neighbour (whose worker threads may still be spinning).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

# Calls that take less than this are repeated inside one sample, so that
# timer resolution and the pause below are negligible (the small case).
MIN_SAMPLE_SECONDS = 0.005
MAX_CALLS_PER_SAMPLE = 2000

# Sleep before each sample. OpenMP (torch) and thread-pool (bnorm) workers
# busy-wait for a while after a parallel region; without a pause the next
# implementation would share the two cores with those spinners.
PAUSE_SECONDS = 0.005


@dataclass
class Timing:
    number: int  # calls per sample (> 1 only for sub-millisecond calls)
    samples: list[float]  # seconds per call, one value per repetition

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeat: int,
    warmup: int = 2,
    min_sample: float = MIN_SAMPLE_SECONDS,
    pause: float = PAUSE_SECONDS,
) -> dict[str, Timing]:
    """Time each zero-argument callable `repeat` times, round-robin."""
    names = list(fns)
    if not names:
        return {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection must not land in one sample
    try:
        # Warm-up: first calls pay one-off costs (thread pool start, lazy
        # initialisation, faulting in caches). Then size the inner loop like
        # timeit.autorange: double the calls until one batch takes min_sample
        # (one call is enough for anything slower than that).
        number = {}
        for name in names:
            fn = fns[name]
            for _ in range(warmup):
                fn()
            n = 1
            while True:
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                elapsed = time.perf_counter() - t0
                if elapsed >= min_sample or n >= MAX_CALLS_PER_SAMPLE:
                    break
                n = min(MAX_CALLS_PER_SAMPLE, max(2 * n, math.ceil(n * min_sample / max(elapsed, 1e-9))))
            number[name] = n

        samples: dict[str, list[float]] = {name: [] for name in names}
        for rep in range(repeat):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                fn, n = fns[name], number[name]
                time.sleep(pause)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: Timing(number[name], samples[name]) for name in names}
