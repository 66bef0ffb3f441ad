"""Kernel scheduling: thread counts, SIMD levels, the two schedules, streaming stores.

The kernels promise the same bits for every thread count and every SIMD level (block
boundaries and merge orders depend only on the shape; no FMA contraction). These
tests hold them to it, and check each level against the float64 reference.
"""
import os
import threading
import time

import numpy as np
import pytest

import bnorm
from bnorm import _core
from bnorm.testing import reference

# Shapes chosen to cover both schedules and both block kinds; each is large enough
# for the thread pool to be used (the pool runs jobs under 65536 elements inline).
SHAPES = {
    "few channels, long rows split into blocks": (3, 2, 150, 150),   # S = 22500 > block
    "few channels, whole-row blocks": (40, 3, 33, 31),
    "many channels (by-channel schedule)": (16, 40, 12, 11),
    "one channel": (2, 1, 200, 190),
}


def make_params(channels, dtype):
    rng = np.random.default_rng(1)
    return rng.uniform(0.5, 2.0, channels).astype(dtype), rng.uniform(-1.0, 1.0, channels).astype(dtype)


def run_training_step(x, dy, dtype):
    """Training forward, backward, then an eval forward and backward."""
    bn = bnorm.BatchNorm2d(x.shape[1], dtype=dtype)
    bn.gamma[...], bn.beta[...] = make_params(x.shape[1], dtype)
    results = [bn(x), bn.backward(dy), bn.grad_gamma, bn.grad_beta, bn.running_mean, bn.running_var]
    bn.eval()
    results += [bn(x), bn.backward(dy), bn.grad_gamma]
    return [np.array(r, copy=True) for r in results]


@pytest.fixture
def restore_config():
    threads, level = bnorm.get_num_threads(), bnorm.simd_level()
    yield
    bnorm.set_num_threads(threads)
    _core._select_simd_level(level)


def make_problem(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 10.0, (1, shape[1], 1, 1)) + 50.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_bit_identical_for_every_thread_count(shape, dtype, restore_config):
    x, dy = make_problem(shape, dtype)
    bnorm.set_num_threads(1)
    expected = run_training_step(x, dy, dtype)
    for threads in (2, 3, 8):
        bnorm.set_num_threads(threads)
        for got, want in zip(run_training_step(x, dy, dtype), expected):
            assert got.tobytes() == want.tobytes(), f"{threads} threads differ from 1 thread"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_every_simd_level_gives_the_same_bits_and_the_reference(shape, dtype, restore_config):
    x, dy = make_problem(shape, dtype)
    levels = _core.supported_simd_levels()
    assert levels[0] == "baseline"
    outputs = {}
    for level in levels:
        _core._select_simd_level(level)
        assert bnorm.simd_level() == level
        outputs[level] = run_training_step(x, dy, dtype)
    gamma, beta = make_params(shape[1], dtype)
    y_ref = reference.forward(x, gamma, beta)
    # The rounding of x itself is amplified by |x| / std (the offset of 50 over the
    # smallest channel scale), then scaled by gamma: a few roundings of that size.
    std = np.sqrt(reference.batch_stats(x)[1])
    tol = 8 * np.finfo(dtype).eps * (np.abs(x).max() / std.min() * np.abs(gamma).max() + np.abs(beta).max())
    for level, results in outputs.items():
        assert np.abs(results[0] - y_ref).max() <= tol, level
        for got, want in zip(results, outputs["baseline"]):
            assert got.tobytes() == want.tobytes(), f"{level} differs from baseline"


STREAM_SCRIPT = """
import numpy as np
import bnorm
rng = np.random.default_rng(0)
shape = (3, 4, 37, 601)   # rows of 601 float32 values: over 2 KiB, not whole cache lines
x = (rng.standard_normal(shape) * rng.uniform(0.1, 10.0, (1, 4, 1, 1)) + 50.0).astype(np.float32)
dy = rng.standard_normal(shape).astype(np.float32)
results = []
# float16 in rows of 1201 values (2402 bytes), so that its NCHW rows stream too
x16 = (rng.standard_normal((3, 4, 19, 1201)) * 2.0 + 5.0).astype(np.float16)
dy16 = rng.standard_normal(x16.shape).astype(np.float16)
for dtype, xd, dyd in ((np.float32, x, dy), (np.float16, x16, dy16)):
    for layout in ("nchw", "nhwc"):
        xs = xd if layout == "nchw" else np.ascontiguousarray(xd.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        bn = bnorm.BatchNorm2d(4, dtype=dtype)
        y = bn(xs)
        dx = bn.backward(dyd)
        bn.eval()
        results += [y, dx, bn(xs)]
np.savez({path!r}, *results)
"""


def test_streamed_output_matches_the_cached_one_bit_for_bit(run_python, tmp_path):
    # BNORM_STREAM_MIN_MIB=0 streams every output the rules allow (NCHW rows over
    # 2 KiB, and channels-last), float32 and float16; a huge threshold streams none.
    # The unaligned head and tail of each row take the ordinary path.
    outputs = {}
    for name, mib in (("streamed", "0"), ("cached", "1048576")):
        path = tmp_path / f"{name}.npz"
        result = run_python(STREAM_SCRIPT.format(path=str(path)), BNORM_STREAM_MIN_MIB=mib)
        assert result.returncode == 0, result.stderr
        with np.load(path) as data:
            outputs[name] = [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]
    for streamed, cached in zip(outputs["streamed"], outputs["cached"]):
        assert streamed.tobytes() == cached.tobytes()
    x_like = outputs["cached"][0]
    assert x_like.shape == (3, 4, 37, 601)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(x_like.shape) * rng.uniform(0.1, 10.0, (1, 4, 1, 1)) + 50.0).astype(np.float32)
    for y in (outputs["streamed"][0], outputs["streamed"][3]):
        np.testing.assert_allclose(y, reference.forward(x), rtol=0, atol=8 * np.finfo(np.float32).eps * 6)


@pytest.mark.parametrize("level", _core.supported_simd_levels())
def test_bnorm_simd_forces_a_level(run_python, level):
    result = run_python("import bnorm; print(bnorm.simd_level())", BNORM_SIMD=level)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == level


def test_bnorm_simd_unknown_value_warns_and_keeps_the_best_level(run_python):
    result = run_python("import warnings, bnorm; print(bnorm.simd_level())", BNORM_SIMD="sse9")
    assert result.returncode == 0, result.stderr
    assert "unknown SIMD level sse9" in result.stderr
    assert result.stdout.strip() == _core.supported_simd_levels()[-1]


def test_bnorm_num_threads_sets_the_default(run_python):
    result = run_python("import bnorm; print(bnorm.get_num_threads())", BNORM_NUM_THREADS="3")
    assert result.stdout.strip() == "3", result.stderr
    result = run_python("import bnorm; print(bnorm.get_num_threads())", BNORM_NUM_THREADS="many")
    assert "BNORM_NUM_THREADS=many" in result.stderr
    assert result.stdout.strip() == str(len(os.sched_getaffinity(0)))


@pytest.mark.parametrize("bad", [0, -1, 5000])
def test_set_num_threads_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"expected an integer in \[1, 1024\], got " + str(bad)):
        bnorm.set_num_threads(bad)


def test_forked_child_runs_a_forward(restore_config):
    # The parent's pool has live workers; the child inherits none of them and must
    # start its own, not wait forever for the parent's.
    bnorm.set_num_threads(2)
    x, _ = make_problem((4, 2, 150, 150), np.float32)
    expected = bnorm.BatchNorm2d(2)(x)
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only if the forward ran and matched
        try:
            os._exit(0 if np.array_equal(bnorm.BatchNorm2d(2)(x), expected) else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_the_earlier_names_of_the_simd_level_functions_still_work():
    assert bnorm.simd_path() == bnorm.simd_level()
    assert bnorm.supported_simd_paths() == bnorm.supported_simd_levels()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # Python >= 3.12
def test_forked_child_uses_a_module_another_thread_was_running(restore_config):
    # fork() copies the module's lock held by the thread running the call, which does
    # not exist in the child: the child must get a fresh lock, not wait for ever.
    bnorm.set_num_threads(1)
    big, _ = make_problem((16, 4, 512, 512), np.float32)  # a forward of some 50 ms
    small, _ = make_problem((4, 4, 8, 8), np.float32)
    bn = bnorm.BatchNorm2d(4).eval()
    expected = bn(small)
    started, stop = threading.Event(), threading.Event()

    def run():
        started.set()
        while not stop.is_set():
            bn(big)

    worker = threading.Thread(target=run)
    worker.start()
    started.wait()
    time.sleep(0.05)  # inside one of the worker's calls, whose lock the child inherits held
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only if the call returned the right output
        try:
            os._exit(0 if np.array_equal(bn(small), expected) else 1)
        finally:
            os._exit(2)
    stop.set()
    worker.join()
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the module's lock")
    assert os.WIFEXITED(done[1]) and os.WEXITSTATUS(done[1]) == 0
