"""Long-run memory behaviour: no leak over 100,000 calls, no temporaries beyond the
output and O(C), and no reference left behind by a call that fails half-way.

Leaks. A C extension leaks by forgetting a Py_DECREF (the object and, for an array,
its buffer stay alive) or a free() (only RSS sees that). After a warm-up (interpreter
caches, NumPy's small-buffer cache and the allocator reach their steady state) each
test makes CALLS forward+backward calls and requires
  * tracemalloc's traced memory (every Python object and every NumPy buffer) to grow
    by less than TRACED_BOUND = 64 KiB: a leaked reference to the smallest object
    (16 bytes with its header, e.g. a float) is 1.6 MB over 100,000 calls, 25 times
    the bound, and a leaked array of the small input is 5 MB per 100 calls;
  * RSS to grow by less than RSS_BOUND = 4 MiB: a lost malloc of 48 bytes or more per
    call (4.8 MB) exceeds it; RSS moves in pages and allocator arenas, and the growth
    observed without leaks is 0 to a few hundred KiB.

Temporaries. The contract is that forward allocates its output and O(C) more. NumPy
reports its allocations to tracemalloc, so the traced peak during a forward on a large
input must stay under the output plus 256 bytes per channel plus 64 KiB; the kernels'
own malloc()s are invisible to tracemalloc, so a fresh interpreter also measures its
peak RSS (VmHWM, reset through /proc/self/clear_refs) across one forward and one
backward writing into preallocated outputs: it may grow by 256 bytes per channel plus
2 MiB, nothing proportional to the input.

Under AddressSanitizer (.ci/sanitize: libasan preloaded) RSS says nothing about
leaks -- freed memory waits in ASan's quarantine and every byte has shadow memory --
so there only the tracemalloc bound applies, and .ci/sanitize leaves out the peak-RSS
test.

Failing calls. An exception half-way through a call (bad dy after a good forward, bad
out=, a bad argument after others were converted, ...) must drop every reference the
call took: sys.getrefcount of every object involved is the same after 200 such calls.
"""
import gc
import os
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

import bnorm
import bnorm.functional as F

SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")
CALLS = 100_000
WARMUP = 2_000
TRACED_BOUND = 64 * 1024
RSS_BOUND = 4 * 1024 * 1024
SHAPE = (4, 8, 4, 4)  # 512 values: a small input, so per-call overhead dominates
FIGURES = []  # printed in pytest's summary by conftest.py



def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def channels_last(x):
    order = (0,) + tuple(range(2, x.ndim)) + (1,)
    back = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
    return np.ascontiguousarray(x.transpose(order)).transpose(back)


def _inputs(dtype=np.float32, layout="c"):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(dtype)
    dy = rng.standard_normal(SHAPE).astype(dtype)
    if layout == "channels_last":
        x, dy = channels_last(x), channels_last(dy)
    return x, dy


def train_calls():
    bn = bnorm.BatchNorm2d(SHAPE[1])
    x, dy = _inputs()

    def call():
        bn(x)
        bn.backward(dy)
    return call


def eval_out_calls():
    bn = bnorm.BatchNorm2d(SHAPE[1], activation="relu").eval()
    x, dy = _inputs(layout="channels_last")
    out, dx = np.empty_like(x), np.empty_like(x)

    def call():
        bn.forward(x, out=out)
        bn.backward(dy, out=dx)
    return call


def float16_calls():
    bn = bnorm.BatchNorm1d(SHAPE[1], dtype=np.float16, momentum=None)
    x, dy = _inputs(np.float16)
    x, dy = x.reshape(4, 8, 16), dy.reshape(4, 8, 16)

    def call():
        bn(x)
        bn.backward(dy)
    return call


def functional_calls():
    x, dy = _inputs(np.float64)
    rm, rv = np.zeros(SHAPE[1]), np.ones(SHAPE[1])
    w, b = np.ones(SHAPE[1]), np.zeros(SHAPE[1])

    def call():
        y, mean, invstd = F.batch_norm(x, rm, rv, w, b, training=True, activation="relu")
        F.batch_norm_backward(dy, x, mean, invstd, w, bias=b, activation="relu")
    return call


def failing_calls():
    """Every call raises, at different depths of the argument handling."""
    bn = bnorm.BatchNorm2d(SHAPE[1])
    x, dy = _inputs()
    bn(x)
    bad_out = np.empty(SHAPE, np.float64)
    rm = np.zeros(SHAPE[1], np.float32)

    def call():
        for fn in (lambda: bn(x.astype(np.float64)), lambda: bn(x[:, :4]), lambda: bn([1.0]),
                   lambda: bn.backward(dy[:1]), lambda: bn.backward(dy, out=bad_out),
                   lambda: bn(x, out=bad_out), lambda: F.batch_norm(x, rm, None, training=True),
                   lambda: F.batch_norm_backward(dy, x, np.zeros(SHAPE[1]), [1.0])):
            try:
                fn()
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError("expected an error")
    return call


@pytest.mark.parametrize("make_calls", [train_calls, eval_out_calls, float16_calls, functional_calls, failing_calls],
                         ids=lambda f: f.__name__)
def test_no_leak_over_100k_calls(make_calls):
    calls = CALLS if make_calls is not failing_calls else CALLS // 8  # each makes 8 failing calls
    tracemalloc.start()
    try:
        call = make_calls()
        for _ in range(WARMUP):
            call()
        gc.collect()
        traced_before, rss_before = tracemalloc.get_traced_memory()[0], rss_bytes()
        for _ in range(calls):
            call()
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        rss_growth = rss_bytes() - rss_before
    finally:
        tracemalloc.stop()
    FIGURES.append(f"memory, {make_calls.__name__}: {calls} forward/backward rounds, traced memory "
                   f"{traced_growth:+d} B (bound {TRACED_BOUND}), RSS {rss_growth / 1024:+.0f} KiB "
                   f"(bound {RSS_BOUND // 1024})")
    assert traced_growth < TRACED_BOUND, f"traced memory grew by {traced_growth} bytes over {calls} calls"
    assert SANITIZED or rss_growth < RSS_BOUND, f"RSS grew by {rss_growth} bytes over {calls} calls"


# ---- temporaries ----

BIG = {  # about 64 MiB of float32 each
    "NCHW": ((32, 64, 96, 85), "c"),
    "NHWC": ((32, 64, 96, 85), "channels_last"),
    "(N, C) with C=4096": ((4096, 4096), "c"),
    "NHWC with C=2048": ((64, 2048, 8, 16), "channels_last"),
}


def module_for(channels, ndim, **options):
    return (bnorm.BatchNorm1d if ndim < 4 else bnorm.BatchNorm2d)(channels, **options)


@pytest.mark.parametrize("case", list(BIG))
def test_forward_traces_only_its_output_and_o_of_c(case):
    """NumPy's allocations during a forward (tracemalloc): the output, plus O(C)."""
    shape, layout = BIG[case]
    channels = shape[1]
    x = np.ones(shape, np.float32)
    x.reshape(-1)[::7] = 3.0
    if layout == "channels_last":
        x = channels_last(x)
    bn = module_for(channels, len(shape))
    for training in (True, False):
        bn.train(training)
        y = bn(x)  # warm-up
        del y
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            y = bn(x)
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert y.strides == x.strides  # the output keeps the layout, so no copy was needed
        bound = x.nbytes + 256 * channels + 64 * 1024
        FIGURES.append(f"memory, {'train' if training else 'eval'} forward {case} {shape}: traced peak "
                       f"{peak / 2**20:.2f} MiB for a {x.nbytes / 2**20:.1f} MiB input (bound {bound / 2**20:.2f} MiB)")
        assert peak <= bound, f"forward traced {peak} bytes for a {x.nbytes}-byte input (bound {bound})"
        del y


PEAK_RSS_CHILD = textwrap.dedent("""
    import numpy as np, bnorm, json, sys

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    shape, layout = {shape!r}, {layout!r}
    x = np.ones(shape, np.float32)
    x.reshape(-1)[::7] = 3.0
    if layout == "channels_last":
        order = (0,) + tuple(range(2, x.ndim)) + (1,)
        back = (0, x.ndim - 1) + tuple(range(1, x.ndim - 1))
        x = np.ascontiguousarray(x.transpose(order)).transpose(back)
    bn = (bnorm.BatchNorm1d if len(shape) < 4 else bnorm.BatchNorm2d)(shape[1])
    out, dx = np.empty_like(x), np.empty_like(x)
    out.fill(0); dx.fill(0)
    bn(x, out=out); bn.backward(x, out=dx)   # warm-up: the pool's threads, the allocator's arenas
    growth = {{}}
    for name, call in (("train forward", lambda: bn(x, out=out)), ("backward", lambda: bn.backward(x, out=dx))):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")               # VmHWM := VmRSS
        base = status("VmRSS")
        call()
        growth[name] = status("VmHWM") - base
    print(json.dumps(growth))
""")


@pytest.mark.parametrize("case", list(BIG))
def test_kernels_allocate_no_temporaries_proportional_to_the_input(case, run_python):
    """All allocations (the kernels' malloc()s too): peak RSS of a fresh interpreter
    across a forward and a backward into preallocated outputs."""
    import json

    shape, layout = BIG[case]
    result = run_python(PEAK_RSS_CHILD.format(shape=shape, layout=layout), BNORM_NUM_THREADS="2")
    assert result.returncode == 0, result.stderr
    growth = json.loads(result.stdout.strip().splitlines()[-1])
    nbytes = int(np.prod(shape)) * 4
    bound = 256 * shape[1] + 2 * 2**20
    FIGURES.append(f"memory, peak RSS growth {case} {shape} ({nbytes / 2**20:.0f} MiB input, out= given): "
                   + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in growth.items())
                   + f" (bound {bound / 2**20:.1f} MiB)")
    for name, value in growth.items():
        assert value <= bound, (f"{name} on {shape} ({layout}) raised peak RSS by {value / 2**20:.1f} MiB "
                                f"for a {nbytes / 2**20:.0f} MiB input; bound {bound / 2**20:.1f} MiB")


# ---- references left behind by failing calls ----

REPEAT = 200


def refcounts(objects):
    return [sys.getrefcount(obj) for obj in objects]


def assert_no_reference_kept(objects, fail, allowed=(TypeError, ValueError, RuntimeError, KeyError)):
    """Run `fail` (which must raise) REPEAT times; every object's refcount is unchanged."""
    for _ in range(3):  # warm-up: caches that take one reference once
        with pytest.raises(allowed):
            fail()
    gc.collect()
    before = refcounts(objects)
    for _ in range(REPEAT):
        with pytest.raises(allowed):
            fail()
    gc.collect()
    after = refcounts(objects)
    leaked = {i: a - b for i, (a, b) in enumerate(zip(after, before)) if a != b}
    assert not leaked, f"references kept after {REPEAT} failing calls (object index: +count): {leaked}"


@pytest.fixture
def trained():
    bn = bnorm.BatchNorm2d(3, activation="relu")
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    bn(x)
    return bn, x


def module_objects(bn):
    return [bn, bn.gamma, bn.beta, bn.running_mean, bn.running_var]


FAILING_MODULE_CALLS = {
    "backward: dy of the wrong shape": lambda bn, x, a: bn.backward(a["dy"][:, :2]),
    "backward: dy of the wrong dtype": lambda bn, x, a: bn.backward(a["dy64"]),
    "backward: dy a list": lambda bn, x, a: bn.backward(a["list"]),
    "backward: strided dy of the wrong shape": lambda bn, x, a: bn.backward(a["dy_strided"][:, :, :3]),
    "backward: channels-last dy, out of the wrong dtype": lambda bn, x, a: bn.backward(a["dy_cl"], out=a["out64"]),
    "backward: read-only out": lambda bn, x, a: bn.backward(a["dy"], out=a["readonly"]),
    "backward: out overlapping x": lambda bn, x, a: bn.backward(a["dy"], out=x),
    "backward: out of the wrong layout": lambda bn, x, a: bn.backward(a["dy"], out=a["out_cl"]),
    "forward: out of the wrong shape": lambda bn, x, a: bn(x, out=a["out_small"]),
    "forward: out = x in training": lambda bn, x, a: bn(a["x2"], out=a["x2"]),
    "forward: out partly overlapping x": lambda bn, x, a: bn(a["base"][:4], out=a["base"][1:5]),
    "forward: one value per channel": lambda bn, x, a: bn(a["x_one"]),
    "forward: wrong channel count": lambda bn, x, a: bn(a["x_wrong_c"]),
    "forward: bad keyword": lambda bn, x, a: bn(x, output=a["dy"]),
    "gamma: wrong dtype": lambda bn, x, a: setattr(bn, "gamma", a["param64"]),
    "running_mean: wrong shape": lambda bn, x, a: setattr(bn, "running_mean", a["param_long"]),
    "load_state_dict: bad value after good ones": lambda bn, x, a: bn.load_state_dict(a["bad_state"]),
    "train: bad mode": lambda bn, x, a: bn.train(a["dy"]),
}


@pytest.mark.parametrize("name", list(FAILING_MODULE_CALLS))
def test_failing_module_call_keeps_no_reference(trained, name):
    bn, x = trained
    rng = np.random.default_rng(1)
    a = {
        "dy": rng.standard_normal(x.shape).astype(np.float32),
        "dy64": np.zeros(x.shape),
        "list": [[1.0]],
        "dy_strided": np.zeros((4, 3, 5, 10), np.float32)[..., ::2],
        "dy_cl": channels_last(np.zeros(x.shape, np.float32)),
        "out64": np.zeros(x.shape),
        "readonly": np.zeros(x.shape, np.float32),
        "out_cl": channels_last(np.zeros(x.shape, np.float32)),
        "out_small": np.zeros((4, 3, 5, 4), np.float32),
        "x2": rng.standard_normal(x.shape).astype(np.float32),
        "base": rng.standard_normal((5, 3, 5, 5)).astype(np.float32),
        "x_one": np.zeros((1, 3, 1, 1), np.float32),
        "x_wrong_c": np.zeros((4, 2, 5, 5), np.float32),
        "param64": np.ones(3),
        "param_long": np.ones(4, np.float32),
        "bad_state": {"weight": np.ones(3), "bias": np.zeros(3), "running_mean": np.zeros(3),
                      "running_var": np.ones((3, 1)), "num_batches_tracked": np.array(3)},
    }
    a["readonly"].setflags(write=False)
    objects = [x] + module_objects(bn) + list(a.values()) + list(a["bad_state"].values())
    assert_no_reference_kept(objects, lambda: FAILING_MODULE_CALLS[name](bn, x, a))
    # the module still works, and backward still refers to the last successful forward
    assert bn.backward(a["dy"]).shape == x.shape


FAILING_FUNCTIONAL_CALLS = {
    "batch_norm: bad running_var after a good running_mean": lambda a: F.batch_norm(
        a["x"], a["rm"], a["rv_wrong"]),
    "batch_norm: bad bias after good statistics and weight": lambda a: F.batch_norm(
        a["x"], a["rm"], a["rv"], a["w"], a["b_wrong"]),
    "batch_norm: bad out after everything else": lambda a: F.batch_norm(
        a["x"], a["rm"], a["rv"], a["w"], a["b"], training=True, out=a["out_wrong"]),
    "batch_norm: out partly overlapping x": lambda a: F.batch_norm(
        a["base"][:4], a["rm"], a["rv"], a["w"], a["b"], out=a["base"][1:5]),
    "batch_norm: bad activation": lambda a: F.batch_norm(a["x"], a["rm"], a["rv"], activation="gelu"),
    "batch_norm: running_mean without running_var": lambda a: F.batch_norm(a["x"], a["rm"], None, a["w"]),
    "backward: bad save_invstd after a good save_mean": lambda a: F.batch_norm_backward(
        a["dy"], a["x"], a["mean"], a["invstd_wrong"], a["w"]),
    "backward: bad bias after good statistics": lambda a: F.batch_norm_backward(
        a["dy"], a["x"], a["mean"], a["invstd"], a["w"], bias=a["b_wrong"], activation="relu"),
    "backward: out overlapping x": lambda a: F.batch_norm_backward(
        a["dy"], a["x"], a["mean"], a["invstd"], a["w"], out=a["x"]),
    "backward: dy of another layout and shape": lambda a: F.batch_norm_backward(
        a["dy_cl_wrong"], a["x"], a["mean"], a["invstd"]),
}


@pytest.mark.parametrize("name", list(FAILING_FUNCTIONAL_CALLS))
def test_failing_functional_call_keeps_no_reference(name):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5, 5))
    y, mean, invstd = F.batch_norm(x, training=True)
    a = {
        "x": x, "y": y, "mean": mean, "invstd": invstd, "dy": rng.standard_normal(x.shape),
        "rm": np.zeros(3), "rv": np.ones(3), "w": np.ones(3), "b": np.zeros(3),
        "rv_wrong": np.ones(3, np.float32), "b_wrong": np.zeros(4), "out_wrong": np.zeros(x.shape, np.float32),
        "base": rng.standard_normal((5, 3, 5, 5)), "invstd_wrong": np.ones(2),
        "dy_cl_wrong": channels_last(np.zeros((4, 3, 5, 4))),
    }
    assert_no_reference_kept(list(a.values()), lambda: FAILING_FUNCTIONAL_CALLS[name](a))


def test_the_refcount_check_detects_a_kept_reference():
    """The harness itself: a call that keeps a reference to its argument and then raises fails the check."""
    kept = []
    x = np.zeros(3)

    def leaky():
        kept.append(x)
        raise ValueError("half-way")

    with pytest.raises(AssertionError, match="references kept"):
        assert_no_reference_kept([x], leaky)


# ---- recycled output blocks (src/binding/alloc.c) ----

def test_recycled_outputs_of_changing_sizes_leave_memory_flat():
    """Allocating calls cycling through more output sizes (4 to 15 MiB) than bnorm keeps
    blocks (8): blocks are kept, reused, evicted and aged out all the time. Over 1,200
    calls a leaked output (>= 4 MiB a call) or a lost block would add GiBs; the kept
    blocks stay within their bounds and RSS within RSS_BOUND plus 64 MiB: glibc's heap
    holds freed blocks of these sizes for a while, and RSS was seen to move by up to
    30 MiB either way from one round to the next without any trend."""
    from bnorm import _core

    sizes = range(4, 16)  # MiB of the (s, 16, 128, 128) float32 output
    inputs = [np.ones((s, 16, 128, 128), np.float32) for s in sizes]
    bn = bnorm.BatchNorm2d(16).eval()

    def call():
        for x in inputs:
            bn(x)
    for _ in range(10):
        call()
    gc.collect()
    tracemalloc.start()
    try:
        traced_before, rss_before = tracemalloc.get_traced_memory()[0], rss_bytes()
        for _ in range(100):
            call()
        gc.collect()
        traced_growth = tracemalloc.get_traced_memory()[0] - traced_before
        rss_growth = rss_bytes() - rss_before
    finally:
        tracemalloc.stop()
    info = _core._output_cache_info()
    FIGURES.append(f"memory, recycled outputs of 12 sizes over 1200 calls: traced {traced_growth:+d} B, RSS "
                   f"{rss_growth / 1024:+.0f} KiB, kept {info['blocks']} blocks, {info['bytes'] / 2**20:.0f} MiB")
    assert info["blocks"] <= info["max_blocks"] and info["bytes"] <= info["limit_bytes"]
    assert traced_growth < TRACED_BOUND, f"traced memory grew by {traced_growth} bytes"
    assert SANITIZED or rss_growth < RSS_BOUND + (64 << 20), f"RSS grew by {rss_growth} bytes"
    _core._release_output_cache()
    assert _core._output_cache_info()["blocks"] == 0
