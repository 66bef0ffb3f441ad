"""Fuzzing bnorm.set_num_threads, with the pool then in use."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from .client import fuzz_settings, run_program
from .recipes import literals, scalars


@fuzz_settings(60)
@given(values=st.lists(st.one_of(st.integers(-3, 6).map(lambda v: ("lit", v)), literals, scalars,
                                 st.sampled_from([("lit", 1024), ("lit", 1025), ("lit", 2**31),
                                                  ("array", "int64", (), "c", "ints")])),
                       min_size=1, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_set_num_threads(server, values, seed):
    """set_num_threads with anything, each followed by a forward/backward big enough to use the pool."""
    ops = [("construct", "BatchNorm2d", [("lit", 4)], {})]
    for v in values:
        ops += [("set_num_threads", v),
                ("forward", 0, ("array", "float32", (4, 4, 64, 72), "c", "normal"), {}),
                ("backward", 0, ("array", "float32", (4, 4, 64, 72), "c", "normal"), {}),
                ("forward", 0, ("array", "float32", (4, 4, 64, 72), "channels_last", "normal"), {})]
    run_program(server, ops, seed)
