"""Fuzzing bnorm.functional."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from .client import fuzz_settings, run_program
from .recipes import functional_ops


@fuzz_settings(700)
@given(ops=st.lists(functional_ops(), min_size=1, max_size=3).map(lambda l: [op for pair in l for op in pair]),
       seed=st.integers(0, 2**32 - 1))
@example(ops=[("batch_norm", [("array", "float32", (2, 0), "c", "normal")], {})],
         seed=0).via("zero channels, two rows")
def test_functional(server, ops, seed):
    """bnorm.functional.batch_norm and batch_norm_backward with arbitrary arguments."""
    run_program(server, ops, seed)
