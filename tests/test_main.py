"""The quick start's first command, `python -m bnorm`: it runs, checks its training
step against the float64 reference, and fails when that check fails; and what
`import bnorm` says when the compiled extension is missing."""

import pathlib
import shutil
import subprocess
import sys

import bnorm

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


def test_import_without_the_extension_says_why_and_what_to_run(tmp_path):
    """A source checkout without the built extension: `import bnorm` must name the
    missing bnorm._core and the command that builds it, chained from the original error."""
    package = pathlib.Path(bnorm.__file__).resolve().parent
    shutil.copytree(package, tmp_path / "bnorm",
                    ignore=shutil.ignore_patterns("_core*.so", "_core*.pyd", "__pycache__"))
    # -S: no site-packages, so no editable install's import hook, which would find the
    # real checkout before the copy; the ImportError comes before anything needs numpy.
    result = subprocess.run([sys.executable, "-S", "-c", "import bnorm"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    err = result.stderr
    assert "ImportError: bnorm's compiled extension bnorm._core cannot be imported" in err, err
    assert "pip install -e ." in err and "python setup.py build_ext --inplace" in err, err
    assert str(tmp_path / "bnorm") in err, err
    # chained from the original error, which is shown first
    assert "No module named 'bnorm._core'" in err and "The above exception was the direct cause" in err, err
