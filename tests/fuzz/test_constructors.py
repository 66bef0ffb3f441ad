"""Fuzzing the constructors."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from .client import fuzz_settings, run_program
from .recipes import constructor_ops


@fuzz_settings(600)
@given(ops=st.lists(constructor_ops(), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_constructors(server, ops, seed):
    """Any constructor arguments: a module whose attributes match them, or an allowed exception."""
    # follow each construction with calls that read the whole state
    program = []
    for op in ops:
        program += [op, ("getattr", -1, "gamma"), ("state_dict", -1, []), ("copy", -1, "deepcopy")]
    run_program(server, program, seed)
