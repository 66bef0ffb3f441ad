"""The quick start's first command, `python -m bnorm`: it runs, checks its training
step against the float64 reference, and fails when that check fails."""

RUN_MAIN = "import runpy; runpy.run_module('bnorm', run_name='__main__')"

# The same, with the reference's output moved by 1e-3: the demo must notice.
RUN_MAIN_WITH_A_WRONG_REFERENCE = """
import bnorm.testing.reference as reference
exact = reference.forward
reference.forward = lambda *args, **kwargs: exact(*args, **kwargs) + 1e-3
""" + RUN_MAIN


def test_python_m_bnorm_runs_and_checks_itself(run_python):
    result = run_python(RUN_MAIN)
    assert result.returncode == 0, f"python -m bnorm failed:\n{result.stdout}\n{result.stderr}"
    for expected in ("simd", "training step on float32", "all within bnorm.testing.assert_batch_norm_close", "times (median of 7"):
        assert expected in result.stdout.lower() or expected in result.stdout, (expected, result.stdout)


def test_python_m_bnorm_fails_when_its_check_fails(run_python):
    result = run_python(RUN_MAIN_WITH_A_WRONG_REFERENCE)
    assert result.returncode == 1, f"expected exit status 1:\n{result.stdout}\n{result.stderr}"
    assert "CHECK FAILED" in result.stdout and "output" in result.stdout
