"""Repeated calls leave memory flat and reference counts where they were.

A C extension leaks by forgetting a Py_DECREF (the object and its buffer
stay alive) or a free (only RSS sees it).  tracemalloc sees every NumPy
array buffer and Python object; RSS (from /proc/self/statm) sees everything
else.  Both are measured after a warm-up, which lets the interpreter,
NumPy's small-buffer cache and the allocator reach their steady state.
"""

import gc
import os
import sys
import tracemalloc

import numpy as np
import pytest

import bnorm
import bnorm.functional as F

CALLS = 10_000
WARMUP = 500
SHAPE = (16, 8, 16, 16)  # float32: 128 KiB per array

# Bounds.  A leaked reference to any per-call array leaks at least one
# 128 KiB buffer per call: 1.25 GiB over CALLS.  A leaked small object
# (>= 16 bytes with its header, e.g. a float or a tuple) is >= 160 KB over
# CALLS and is what the tracemalloc bound catches; the remaining 64 KiB
# allows for interpreter caches that grow once and are not leaks.  RSS
# moves in pages and with the C allocator's arenas, so its bound is looser:
# 8 MiB still catches a lost malloc of 1 KiB per call (10 MB) and is many
# times the run-to-run noise observed (0 to a few hundred KiB).
TRACED_BOUND = 64 * 1024
RSS_BOUND = 8 * 1024 * 1024
# Under AddressSanitizer (.ci/sanitize preloads libasan) freed memory waits in ASan's
# quarantine, so RSS grows without a leak (11 MB over CALLS seen): there only the
# tracemalloc bound applies, as in test_memory_long.py.
SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def arrays(rng):
    x = rng.standard_normal(SHAPE).astype(np.float32)
    return x, rng.standard_normal(SHAPE).astype(np.float32), np.empty_like(x)


def module_calls(bn, x, dy, out):
    """Training and eval forward/backward, with and without out=."""
    bn.train()
    bn(x)
    bn.backward(dy)
    bn.eval()
    bn.forward(x, out=out)
    bn.backward(dy, out=out)


def functional_calls(bn, x, dy, out):
    y, mean, invstd = F.batch_norm(x, bn.running_mean, bn.running_var, bn.gamma, bn.beta,
                                   training=True)
    F.batch_norm_backward(dy, x, mean, invstd, bn.gamma, out=out)


def failing_calls(bn, x, dy, out):
    """Error paths, which are where forgotten decrefs usually hide."""
    for bad in (x.astype(np.float64), x[:, :4], [1.0]):
        try:
            bn(bad)
        except (TypeError, ValueError):
            pass
    try:
        bn.backward(dy[:1])
    except ValueError:
        pass


@pytest.mark.parametrize("calls", [module_calls, functional_calls, failing_calls],
                         ids=lambda f: f.__name__)
def test_memory_is_flat(arrays, calls):
    bn = bnorm.BatchNorm2d(SHAPE[1])
    x, dy, out = arrays
    bn(x)  # so that backward is allowed in every variant

    for _ in range(WARMUP):
        calls(bn, x, dy, out)
    gc.collect()
    tracemalloc.start()
    try:
        traced_before = tracemalloc.get_traced_memory()[0]
        rss_before = rss_bytes()
        for _ in range(CALLS):
            calls(bn, x, dy, out)
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        rss_growth = rss_bytes() - rss_before
    finally:
        tracemalloc.stop()
    assert traced_growth < TRACED_BOUND, f"traced memory grew by {traced_growth} bytes"
    assert SANITIZED or rss_growth < RSS_BOUND, f"RSS grew by {rss_growth} bytes"


@pytest.mark.parametrize("calls", [module_calls, functional_calls, failing_calls],
                         ids=lambda f: f.__name__)
def test_refcounts_return_to_baseline(arrays, calls):
    bn = bnorm.BatchNorm2d(SHAPE[1])
    x, dy, out = arrays
    bn(x)
    parameters = [bn.gamma, bn.beta, bn.running_mean, bn.running_var]
    other = np.ones_like(x)
    bn(other)  # the module may keep its last input for backward: make that `other`
    watched = [x, dy, out, bn, *parameters]
    before = [sys.getrefcount(obj) for obj in watched]
    for _ in range(1000):
        calls(bn, x, dy, out)
    bn.train()
    bn(other)  # drop any reference to x kept for backward
    after = [sys.getrefcount(obj) for obj in watched]
    names = ["x", "dy", "out", "module", "gamma", "beta", "running_mean", "running_var"]
    assert dict(zip(names, after)) == dict(zip(names, before))


def test_result_arrays_are_not_retained(arrays):
    """The returned y and dx belong to the caller alone (freed as soon as dropped)."""
    bn = bnorm.BatchNorm2d(SHAPE[1])
    x, dy, _ = arrays
    y = bn(x)
    dx = bn.backward(dy)
    # one reference held by the local name, one by getrefcount's argument
    assert sys.getrefcount(y) == 2 and sys.getrefcount(dx) == 2


# Outputs of at least 4 MiB come from bnorm's recycled output blocks (src/binding/alloc.c):
# kept blocks are freed memory that tracemalloc no longer counts, so these loops check that
# recycling hides no leak: a leaked output is 4 MiB per call, hundreds of MiB over CALLS_LARGE.
LARGE_SHAPE = (4, 16, 128, 128)  # float32: 4 MiB
CALLS_LARGE = 200


def large_calls(bn, x, dy):
    bn.train()
    bn(x)
    bn.backward(dy)
    bn.eval()
    bn(x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_recycled_large_outputs_leave_memory_flat(rng, layout):
    x = rng.standard_normal(LARGE_SHAPE).astype(np.float32)
    dy = rng.standard_normal(LARGE_SHAPE).astype(np.float32)
    if layout == "channels_last":
        x, dy = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) for a in (x, dy))
    bn = bnorm.BatchNorm2d(LARGE_SHAPE[1])
    for _ in range(10):
        large_calls(bn, x, dy)
    gc.collect()
    hits_before = bnorm._core._output_cache_info()["hits"]
    tracemalloc.start()
    try:
        traced_before, rss_before = tracemalloc.get_traced_memory()[0], rss_bytes()
        for _ in range(CALLS_LARGE):
            large_calls(bn, x, dy)
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        rss_growth = rss_bytes() - rss_before
    finally:
        tracemalloc.stop()
    info = bnorm._core._output_cache_info()
    assert info["hits"] - hits_before == 3 * CALLS_LARGE  # every output was a recycled block
    assert info["bytes"] <= info["limit_bytes"] and info["blocks"] <= info["max_blocks"]
    assert traced_growth < TRACED_BOUND, f"traced memory grew by {traced_growth} bytes"
    assert SANITIZED or rss_growth < RSS_BOUND, f"RSS grew by {rss_growth} bytes"
