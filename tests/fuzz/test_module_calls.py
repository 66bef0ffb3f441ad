"""Fuzzing calls on modules, with and without arrays modified between the calls."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from .client import fuzz_settings, run_program
from .recipes import module_programs


# Regression examples (always run, before the generated ones): cases fuzzing found once.
_BN3 = ("construct", "BatchNorm1d", [("lit", 3)], {"momentum": ("lit", None)})
_X3 = ("array", "float32", (4, 3), "c", "normal")


@fuzz_settings(900)
@given(ops=module_programs(), seed=st.integers(0, 2**32 - 1))
@example(ops=[_BN3, ("setattr", 0, "num_batches_tracked", ("lit", 2**63 - 1)), ("forward", 0, _X3, {})],
         seed=0).via("num_batches_tracked at its maximum, then a training forward")
@example(ops=[_BN3, ("forward", 0, _X3, {}),
              ("load_state_dict", 0, ("state_dict", 0, [("set", "weight", ("array", "float32", (3,), "c", "normal")),
                                                        ("set", "num_batches_tracked", ("scalar", "int64", -1))]), {})],
         seed=0).via("load_state_dict failing on its last key")
def test_module_calls(server, ops, seed):
    """forward, backward, train, eval, state_dict, load_state_dict and attribute
    assignments with arbitrary arguments, on one or two modules."""
    run_program(server, ops, seed)


@fuzz_settings(500)
@given(ops=module_programs(mutations=True), seed=st.integers(0, 2**32 - 1))
@example(ops=[("construct", "BatchNorm2d", [("lit", 64)], {}), ("mutate", ("attr", 0, "running_mean"), "resize_smaller"),
              ("forward", 0, ("array", "float32", (3, 64, 2, 2), "c", "normal"), {})],
         seed=0).via("the module's running_mean resized by the user, then a forward")
def test_arrays_modified_or_resized_between_calls(server, ops, seed):
    """The same calls, with inputs, outputs and the module's own arrays overwritten
    (NaN, inf), made read-only, reshaped or resized (ndarray.resize, which NumPy
    allows on an array nobody else references) between the calls."""
    run_program(server, ops, seed)
