"""bnorm.SyncBatchNorm under real MPI: `mpiexec -n 2/3/4` running tests/mpi/sync_worker.py.

The workers compare every rank's results with single-process bnorm and torch (float64)
on the whole batch: Hypothesis-drawn cases (uneven splits with empty ranks, 2-5
dimensions, channels-last, float16/32/64, every constructor option, large offsets,
training steps then eval), convert, a sub-communicator, a one-rank communicator (the
single-process bits), spatial sizes differing between ranks, and the mismatch errors
on every rank. mpiexec and mpi4py come with
the test extras (mpi4py, mpich), so their absence is a failure, not a skip. Each run
has a timeout: a rank stuck in a collective fails the test instead of stalling CI.
"""
import importlib.util
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

import bnorm

WORKER = pathlib.Path(__file__).resolve().parent / "mpi" / "sync_worker.py"
TIMEOUT_S = 120
# Hypothesis cases per run: each run draws its own (a fixed seed per rank count, as the
# suite's derandomized "ci" profile does)
EXAMPLES = 12


def mpiexec() -> str:
    """The mpiexec of this Python's environment (mpich's wheel puts it beside python)."""
    beside = pathlib.Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None or importlib.util.find_spec("mpi4py") is None:
        pytest.fail('mpiexec or mpi4py is missing: pip install "bnorm[mpi]" (or the test extras, ".[test]")')
    return found


def run_mpi(ranks: int, script: pathlib.Path, *args: str, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Runs `mpiexec -n ranks python script args`, importing the bnorm these tests import;
    one thread per rank, since the ranks share the machine's cores."""
    package_parent = str(pathlib.Path(bnorm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")]),
           "BNORM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [mpiexec(), "-n", str(ranks), sys.executable, str(script), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # mpiexec and every rank: they share the new session
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command)} did not finish in {timeout} s (a rank waiting in a collective?):\n{output}")
    return subprocess.CompletedProcess(command, process.returncode, output)


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_sync_batchnorm_equals_single_process_and_torch(ranks):
    result = run_mpi(ranks, WORKER, str(ranks), str(EXAMPLES))
    assert result.returncode == 0, result.stdout
    assert f"sync_worker: {ranks} ranks, {EXAMPLES} cases, 0 failures" in result.stdout, result.stdout


def test_missing_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "bnorm\[mpi\]"'):
        bnorm.SyncBatchNorm(3)


def test_data_parallel_example_matches_one_process():
    example = pathlib.Path(__file__).resolve().parents[1] / "examples" / "sync_bn_mpi.py"
    result = run_mpi(2, example, "--steps", "25")
    assert result.returncode == 0, result.stdout
    assert "equal to rounding" in result.stdout, result.stdout
