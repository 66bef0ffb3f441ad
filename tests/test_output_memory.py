"""bnorm's recycling of large output blocks (src/binding/alloc.c).

An allocating call whose output is at least 4 MiB gets its memory through bnorm's NumPy
memory handler, installed only for that allocation; a freed output's block is kept (at
most 8 blocks, at most the limit in bytes, released after 32 large allocations without
reuse) and handed to the next output of exactly that size. These tests check that the
handler touches only bnorm's own outputs, that a recycled block gives the same results
as a fresh one, the bounds, the release of unused blocks, and behaviour under threads
and fork().
"""
import gc
import os
import threading

import numpy as np
import pytest

import bnorm
from bnorm import _core

try:
    from numpy._core.multiarray import get_handler_name
except ImportError:  # NumPy 1.x
    from numpy.core.multiarray import get_handler_name

INFO = _core._output_cache_info()
MIN_BYTES = INFO["min_bytes"]
MAX_BLOCKS = INFO["max_blocks"]
MAX_AGE = INFO["max_age"]
DEFAULT_LIMIT = INFO["limit_bytes"]
BIG = (4, 16, 128, 128)  # float32: 4 MiB, the smallest size recycled
CHANNELS = BIG[1]


def channels_last(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def owner(a):
    """The array that owns a's memory (a channels-last output is a transposed view)."""
    while a.base is not None:
        a = a.base
    return a


@pytest.fixture(autouse=True)
def fresh_cache():
    """Every test starts with no kept blocks and the default limit, and leaves it so."""
    gc.collect()
    _core._set_output_cache_limit(DEFAULT_LIMIT)
    _core._release_output_cache()
    yield
    gc.collect()
    _core._set_output_cache_limit(DEFAULT_LIMIT)
    _core._release_output_cache()


@pytest.fixture
def big(rng):
    return rng.standard_normal(BIG).astype(np.float32)


def test_the_default_bounds_are_the_documented_ones():
    assert (MIN_BYTES, MAX_BLOCKS, MAX_AGE) == (4 << 20, 8, 32)
    assert DEFAULT_LIMIT == 512 << 20 or "BNORM_OUTPUT_CACHE_MIB" in os.environ


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_large_outputs_use_the_handler_and_small_ones_numpy_s(big, layout):
    x = big if layout == "nchw" else channels_last(big)
    bn = bnorm.BatchNorm2d(CHANNELS)
    y = bn(x)
    dx = bn.backward(x)
    assert get_handler_name(owner(y)) == "bnorm_output_cache"
    assert get_handler_name(owner(dx)) == "bnorm_output_cache"
    assert y.strides == x.strides
    small = x[:, :, :64]  # 2 MiB
    assert get_handler_name(owner(bnorm.BatchNorm2d(CHANNELS)(small))) == "default_allocator"


def test_the_handler_is_not_left_installed_for_the_user_s_arrays(big):
    bnorm.BatchNorm2d(CHANNELS)(big)
    assert get_handler_name() == "default_allocator"  # the handler of the next new array
    assert get_handler_name(np.empty(BIG, np.float32)) == "default_allocator"
    assert get_handler_name(big * 2) == "default_allocator"


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False])
def test_a_recycled_block_gives_the_same_result_as_out(big, layout, training):
    x = big if layout == "nchw" else channels_last(big)
    bn = bnorm.BatchNorm2d(CHANNELS, momentum=0.0).train(training)  # momentum 0: every call alike
    expected = np.full_like(x, np.nan)
    bn(x, out=expected)
    first = bn(x)
    address = owner(first).ctypes.data
    first.fill(np.nan)  # the stale contents a recycled block starts with
    del first
    hits = _core._output_cache_info()["hits"]
    second = bn(x)
    assert owner(second).ctypes.data == address
    assert _core._output_cache_info()["hits"] == hits + 1
    np.testing.assert_array_equal(second, expected)


def test_a_block_is_reused_only_for_its_exact_size(big):
    bn = bnorm.BatchNorm2d(CHANNELS).eval()
    y = bn(big)
    address = y.ctypes.data
    del y
    other = np.ascontiguousarray(np.concatenate([big, big[:1]]))  # 5 MiB
    z = bn(other)
    assert z.ctypes.data != address
    assert _core._output_cache_info()["blocks"] == 1  # the 4 MiB block is still kept
    np.testing.assert_array_equal(z[:4], bn(big))


def test_at_most_max_blocks_are_kept(big):
    bn = bnorm.BatchNorm2d(CHANNELS)
    inputs = [np.ascontiguousarray(np.concatenate([big] + [big[:1]] * k)) for k in range(MAX_BLOCKS + 3)]
    outputs = [bn(x) for x in inputs]
    total = sum(y.nbytes for y in outputs)
    while outputs:
        del outputs[0]  # freed in the order they were made
    info = _core._output_cache_info()
    assert info["blocks"] == MAX_BLOCKS
    # the oldest freed went first: the kept ones are the last MAX_BLOCKS freed
    assert info["bytes"] == sum(x.nbytes for x in inputs[-MAX_BLOCKS:]) < total


def test_at_most_the_limit_is_kept(big):
    limit = 3 * big.nbytes + big.nbytes // 2
    _core._set_output_cache_limit(limit)
    bn = bnorm.BatchNorm2d(CHANNELS)
    outputs = [bn(big) for _ in range(6)]
    while outputs:
        del outputs[0]
    info = _core._output_cache_info()
    assert info["limit_bytes"] == limit
    assert (info["blocks"], info["bytes"]) == (3, 3 * big.nbytes)
    # lowering the limit releases what no longer fits
    assert _core._set_output_cache_limit(big.nbytes) == limit
    assert _core._output_cache_info()["bytes"] == big.nbytes
    # a block larger than the limit is never kept
    _core._set_output_cache_limit(big.nbytes - 1)
    assert _core._output_cache_info()["blocks"] == 0
    y = bn(big)
    del y
    assert _core._output_cache_info()["blocks"] == 0


def test_a_zero_limit_turns_recycling_off(big):
    _core._set_output_cache_limit(0)
    y = bnorm.BatchNorm2d(CHANNELS)(big)
    assert get_handler_name(y) == "default_allocator"
    del y
    assert _core._output_cache_info()["blocks"] == 0


def test_a_block_not_reused_is_released_after_max_age_large_allocations(big):
    bn = bnorm.BatchNorm2d(CHANNELS)
    y = bn(big)
    del y  # kept: 4 MiB
    other = np.ascontiguousarray(np.concatenate([big, big[:1]]))  # 5 MiB outputs
    for _ in range(MAX_AGE):
        bn(other)  # a 5 MiB output, freed at once
    assert _core._output_cache_info()["bytes"] == big.nbytes + other.nbytes  # age MAX_AGE: still kept
    bn(other)
    assert _core._output_cache_info()["bytes"] == other.nbytes  # the 4 MiB block aged out


def test_release_frees_every_kept_block(big):
    bn = bnorm.BatchNorm2d(CHANNELS)
    ys = [bn(big), bn(big)]
    del ys
    assert _core._release_output_cache() == 2 * big.nbytes
    assert _core._output_cache_info()["blocks"] == 0
    assert _core._release_output_cache() == 0


def test_resize_of_a_recycled_output_works(big):
    bn = bnorm.BatchNorm2d(CHANNELS)
    bn(big)
    y = bn(big)  # a recycled block
    expected = y.copy()
    y.resize((2 * big.size,), refcheck=False)  # realloc through the handler
    np.testing.assert_array_equal(y[: big.size], expected.ravel())
    del y  # freed at its new size


def test_concurrent_allocating_calls_from_threads(rng):
    """Threads allocate and free large outputs at once (the kernels release the GIL);
    every result matches the out= result and the bounds hold afterwards."""
    shapes = [(4, 16, 128, 128), (4, 16, 160, 128), (4, 16, 192, 128)]
    inputs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    expected = [np.empty_like(x) for x in inputs]
    for x, e in zip(inputs, expected):
        bnorm.BatchNorm2d(16).eval()(x, out=e)
    failures = []

    def work(i):
        bn = bnorm.BatchNorm2d(16).eval()  # one module per thread
        for _ in range(25):
            y = bn(inputs[i])
            if not np.array_equal(y, expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(i % 3,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    info = _core._output_cache_info()
    assert info["blocks"] <= MAX_BLOCKS and info["bytes"] <= info["limit_bytes"]
    assert info["hits"] > 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # Python >= 3.12
def test_fork_while_other_threads_allocate(big):
    """fork() while another thread allocates and frees outputs: the child gets a
    consistent cache (the prepare handler holds its lock) and can use and release it."""
    # The churning thread has its own module: a module object whose call another thread
    # is running at fork() time stays locked in the child (its lock is copied held).
    churner, bn = bnorm.BatchNorm2d(CHANNELS).eval(), bnorm.BatchNorm2d(CHANNELS).eval()
    expected = np.empty_like(big)
    bn(big, out=expected)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            churner(big)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(5):
            pid = os.fork()
            if pid == 0:  # child: only this thread exists
                ok = all(np.array_equal(bn(big), expected) for _ in range(3))
                ok = ok and _core._output_cache_info()["blocks"] <= MAX_BLOCKS
                _core._release_output_cache()
                os._exit(0 if ok and _core._output_cache_info()["blocks"] == 0 else 1)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        stop.set()
        worker.join()


@pytest.mark.parametrize("value, limit", [("0", 0), ("64", 64 << 20)])
def test_the_environment_variable_sets_the_limit(run_python, value, limit):
    result = run_python("from bnorm import _core; print(_core._output_cache_info()['limit_bytes'])",
                        BNORM_OUTPUT_CACHE_MIB=value)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == limit


def test_a_bad_environment_variable_warns_and_keeps_the_default(run_python):
    result = run_python("import warnings; warnings.simplefilter('always')\n"
                        "from bnorm import _core; print(_core._output_cache_info()['limit_bytes'])",
                        BNORM_OUTPUT_CACHE_MIB="lots")
    assert result.returncode == 0, result.stderr
    assert "BNORM_OUTPUT_CACHE_MIB=lots" in result.stderr
    assert int(result.stdout.split()[-1]) == 512 << 20


def test_out_never_touches_the_cache(big):
    bn = bnorm.BatchNorm2d(CHANNELS)
    out = np.empty_like(big)
    before = _core._output_cache_info()
    for _ in range(3):
        bn(big, out=out)
        bn.backward(big, out=out)
    after = _core._output_cache_info()
    assert (after["hits"], after["misses"], after["blocks"]) == (before["hits"], before["misses"], before["blocks"])
