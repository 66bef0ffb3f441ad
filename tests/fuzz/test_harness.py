"""The fuzzing harness notices what it exists to notice."""

from __future__ import annotations

import pytest

from .client import run_program


def test_the_fuzzer_detects_crashes_wrong_exceptions_and_wrong_results(server):
    """The harness itself: a crash, an exception of another type and a result that
    differs from the formula are each a failure (and pytest survives the crash)."""
    with pytest.raises(AssertionError, match="CRASH.*SIGABRT"):
        run_program(server, [("selftest_crash",)])
    with pytest.raises(AssertionError, match="raised builtins.ZeroDivisionError"):
        run_program(server, [("selftest_raise",)])
    good = [("construct", "BatchNorm2d", [("lit", 3)], {}),
            ("forward", 0, ("array", "float32", (4, 3, 2, 2), "c", "normal"), {}),
            ("backward", 0, ("array", "float32", (4, 3, 2, 2), "c", "normal"), {})]
    run_program(server, good)
    with pytest.raises(AssertionError, match="forward output"):
        run_program(server, [("selftest_wrong_formula",)] + good)
