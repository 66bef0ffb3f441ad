"""Pytest side: the connection to the fuzz server, run_program and the example counts."""

from __future__ import annotations

import collections
import os
import pickle
import select
import struct
import subprocess
import sys
import time

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("BNORM_FUZZ_SCALE", "1"))
STATS = collections.Counter()
OUTCOMES = collections.Counter()


MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"


class Server:
    """The fuzz server process; restarted if it ever dies itself."""

    def __init__(self):
        self.proc = None

    def start(self):
        import bnorm

        # the server imports the bnorm these tests import (an in-place build or an installed one)
        beside = os.path.dirname(os.path.dirname(os.path.abspath(bnorm.__file__)))
        # and this package's server module, from the folder that holds the package
        above_package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [beside, above_package,
                                                                       os.environ.get("PYTHONPATH")])),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1", PYTHONHASHSEED="0")
        if "asan" not in env.get("LD_PRELOAD", "") and os.path.exists(MALLOC_DEBUG):
            # glibc's checking malloc: a write past the end of a heap block aborts when it is freed
            env["LD_PRELOAD"] = " ".join(filter(None, [MALLOC_DEBUG, env.get("LD_PRELOAD")]))
            env["MALLOC_CHECK_"] = "3"
        self.proc = subprocess.Popen([sys.executable, "-m", f"{__package__}.server", "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=beside)

    def run(self, case):
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        data = pickle.dumps(case)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            header = self._read(8)
            reply = pickle.loads(self._read(struct.unpack("<Q", header)[0]))
        except (OSError, EOFError, struct.error) as exc:
            self.stop()
            raise AssertionError(f"the fuzz server died ({exc}) while running {case!r}")
        return reply

    def _read(self, n):
        timeout = 4 * float(os.environ.get("BNORM_FUZZ_TIMEOUT", "20")) + 30
        out = b""
        deadline = time.monotonic() + timeout
        while len(out) < n:
            if not select.select([self.proc.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise EOFError("no reply from the fuzz server")
            chunk = os.read(self.proc.stdout.fileno(), n - len(out))
            if not chunk:
                raise EOFError("the fuzz server closed its output")
            out += chunk
        return out

    def stop(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


class _Summary:
    """Prints the fuzzing figures in pytest's terminal summary (whatever the capture mode)."""

    def __init__(self):
        self.lines = []

    def pytest_terminal_summary(self, terminalreporter):
        for line in self.lines:
            terminalreporter.write_line(line)


def run_program(server, ops, seed=0):
    case = {"ops": ops, "seed": seed}
    reply = server.run(case)
    STATS["programs"] += 1
    result = reply["result"]
    where = reply["stderr"].strip().splitlines()
    last_op = next((line for line in reversed(where) if line.startswith("# op ")), "(before the first op)")
    if reply["hung"]:
        raise AssertionError(f"HANG (no result within the timeout) at {last_op}\nprogram: {ops!r}")
    if reply["died"]:
        raise AssertionError(f"CRASH: the child was {reply['died']} at {last_op}\nprogram: {ops!r}\n"
                             f"stderr:\n{reply['stderr'][-4000:]}")
    if result is None:
        raise AssertionError(f"no result from the child\nprogram: {ops!r}\nstderr:\n{reply['stderr']}")
    if "internal" in result:
        raise AssertionError(f"fuzzer error:\n{result['internal']}\nprogram: {ops!r}")
    STATS["calls"] += result["calls"]
    for outcome in result["outcomes"]:
        OUTCOMES[outcome[1]] += 1
    assert not result["problems"], "\n".join(result["problems"]) + f"\nprogram: {ops!r}"


def fuzz_settings(examples):
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))
