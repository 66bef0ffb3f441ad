"""The fuzz server: preloads NumPy and bnorm, then forks one child per program
(run as `python -m fuzz.server --serve` from tests/, as client.Server does)."""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import tempfile
import time
import traceback

from .program import Program
from .values import _subclass


def _limit_memory():
    """Huge allocations fail fast with MemoryError instead of eating the machine
    (not under AddressSanitizer, which reserves terabytes of address space)."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        return
    import resource

    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = vsize + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _run_child(case, result_fd):
    import faulthandler
    import gc
    import warnings

    faulthandler.enable()
    _limit_memory()
    warnings.simplefilter("ignore")  # warnings are not failures here; exceptions are
    try:
        program = Program(case)
        result = program.run()
    except BaseException:  # a bug in the fuzzer itself
        result = {"internal": traceback.format_exc()}
        program = None
    data = pickle.dumps(result)
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(result_fd, view):]
    # Tear everything down so that heap corruption shows up now, in this child.
    del program, result
    gc.collect()


def serve():
    import gc

    import copy  # noqa: F401  (everything a child uses is loaded once here, shared by every child)
    import faulthandler  # noqa: F401
    import resource  # noqa: F401
    import warnings  # noqa: F401

    import numpy
    import numpy.lib.stride_tricks  # noqa: F401
    import numpy.ma  # noqa: F401

    import bnorm  # noqa: F401
    import bnorm.functional  # noqa: F401

    numpy.random.default_rng(0).standard_normal(3)
    _subclass()
    bnorm.BatchNorm1d(2)(numpy.ones((2, 2), numpy.float32))
    gc.collect()
    gc.freeze()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    timeout = float(os.environ.get("BNORM_FUZZ_TIMEOUT", "20"))
    err = tempfile.TemporaryFile()
    while True:
        header = stdin.read(8)
        if len(header) < 8:
            return
        case = pickle.loads(stdin.read(struct.unpack("<Q", header)[0]))
        err.seek(0)
        err.truncate()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(err.fileno(), 2)
            code = 0
            try:
                _run_child(case, w)
            except BaseException:
                code = 3
            os._exit(code)
        os.close(w)
        chunks, deadline, hung = [], time.monotonic() + timeout, False
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        result = pickle.loads(data[8:]) if len(data) >= 8 and len(data) - 8 == struct.unpack("<Q", data[:8])[0] else None
        err.seek(0)
        stderr = err.read()[-6000:].decode(errors="replace")
        if os.WIFSIGNALED(status):
            died = f"killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
        elif os.WEXITSTATUS(status) != 0:
            died = f"exited with status {os.WEXITSTATUS(status)}"
        else:
            died = None
        reply = pickle.dumps({"result": result, "hung": hung, "died": died, "stderr": stderr})
        stdout.write(struct.pack("<Q", len(reply)) + reply)
        stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
    sys.exit(0)
