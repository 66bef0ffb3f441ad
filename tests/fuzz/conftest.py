"""The fuzz server fixture and the fuzzing figures in pytest's summary."""

from __future__ import annotations

import time

import pytest

from .client import OUTCOMES, STATS, Server, _Summary


@pytest.fixture(scope="package")
def server(request, record_testsuite_property):
    """One fuzz server for all the fuzzing tests of this package (stopped after the last
    one, so the time printed is theirs); the figures are printed once, at the end."""
    summary = _Summary()
    request.config.pluginmanager.register(summary, "bnorm-fuzz-summary")
    srv = Server()
    srv.start()
    start = time.monotonic()
    yield srv
    srv.stop()
    elapsed = time.monotonic() - start
    outcomes = ", ".join(f"{k} {v}" for k, v in OUTCOMES.most_common())
    summary.lines.append(f"API fuzzing: {STATS['programs']} programs, {STATS['calls']} API calls in {elapsed:.1f} s, "
                         f"each program in its own child process (outcomes: {outcomes})")
    record_testsuite_property("fuzz_programs", STATS["programs"])
    record_testsuite_property("fuzz_calls", STATS["calls"])
