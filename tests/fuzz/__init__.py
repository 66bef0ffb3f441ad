"""API fuzzing: every public constructor, method, attribute and function called with
arbitrary Python values, in a child process.

Hypothesis generates *programs*: short sequences of calls on one or two modules and
the functional layer, whose arguments are recipes for values (wrong types, None,
nested lists, 0-d and empty arrays, huge and negative sizes, NaN/inf, object,
string, structured and datetime arrays, float16, byte-swapped, unaligned,
read-only, non-contiguous, channels-last and zero-stride (np.broadcast_to) views,
NumPy subclasses, the module's own arrays passed back to it, and arrays resized or
overwritten between calls). Recipes are plain data: a server process (tests/fuzz/server.py,
run as a script) builds the values and runs each program in a process forked from it,
so a segfault, an abort or a hang (a timeout) is reported as a failure of that
program instead of killing pytest.

For every call the only acceptable outcomes are
  * success with a correct result: the right type, shape, dtype and layout, the
    values of the float64 formulas where the inputs are clean, and the module's state
    updated as documented (num_batches_tracked, running statistics), or
  * one of the documented exceptions (ALLOWED), leaving the module's state as it was.
Never a signal, a hang, another exception type or an exception out of a getter.

The number of programs and calls run is printed at the end of the module and
recorded as the junit properties fuzz_programs / fuzz_calls. BNORM_FUZZ_SCALE
multiplies the number of examples (default 1: about 10,000 calls in under a minute
on two cores).

The package, one purpose per file:
  vocabulary.py        the recipe vocabulary both sides share (allowed exceptions, dtypes, layouts, fills...)
  values.py            child side: builds values from recipes
  formulas.py          child side: the float64 formulas and error scales results are checked against
  program.py           child side: runs one program's calls and checks the invariants of every module
  module_checks.py     child side: checks of module calls (construct, forward, backward, fold, state, setattr)
  functional_checks.py child side: checks of bnorm.functional.batch_norm and batch_norm_backward
  server.py            the server process that forks one child per program
  client.py            pytest side: the connection to the server and run_program
  recipes.py           pytest side: Hypothesis strategies for recipes and programs
  conftest.py          the server fixture and the fuzzing figures
  test_*.py            the tests
"""
