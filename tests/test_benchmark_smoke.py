"""benchmarks/compare.py runs: its smoke mode on the small case, its refusal without bnorm.

The numbers of a smoke run mean nothing (one repetition, on a loaded CI machine); these
tests check that the script, its correctness check and its report work end to end, so
that the full run the README's tables come from does not fail after minutes.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPARE = ROOT / "benchmarks" / "compare.py"


def run_compare(*args, pythonpath=None, cwd=ROOT):
    """compare.py in a fresh interpreter that imports the bnorm these tests import
    (or, with `pythonpath`, whatever that path gives)."""
    if pythonpath is None:
        import bnorm
        pythonpath = pathlib.Path(bnorm.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "BNORM_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(COMPARE), *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env=env)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, torch):
    path = tmp_path_factory.mktemp("bench") / "results.json"
    result = run_compare("--smoke", "--json", str(path))
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(path.read_text())


def test_smoke_mode_reports_every_op_of_the_small_case(smoke):
    stdout, data = smoke
    assert data["meta"]["smoke"] is True and data["meta"]["repeat"] == 1
    ops = [r["op"] for r in data["results"]]
    assert ops == ["train_fwd", "eval_fwd", "backward", "module_fwd_bwd"]
    for rec in data["results"][:3]:
        assert not rec["excluded"], rec["excluded"]  # bnorm agreed with torch
        assert {"bnorm (out=)", "bnorm (alloc)", "torch (out=)", "torch (alloc)"} <= set(rec["timings"])
        # the 1-thread pass: bnorm (out=) and one torch call
        assert "bnorm (out=)" in rec["timings_1_thread"]
        assert sum(name.startswith("torch") for name in rec["timings_1_thread"]) == 1
    header = next(line for line in stdout.splitlines() if line.startswith("| shape | dtype | op"))
    for column in ("torch/bnorm alloc", "alloc/out=", "bnorm 1T ms", "bnorm 1→2T", "torch 1→2T"):
        assert column in header
    assert "Rows behind torch" in stdout and "Allocating / out=" in stdout


def test_no_scaling_skips_the_one_thread_pass(tmp_path, torch):
    path = tmp_path / "r.json"
    result = run_compare("--smoke", "--no-scaling", "--cases", "4x8x4x4", "--json", str(path))
    assert result.returncode == 0, result.stderr
    data = json.loads(path.read_text())
    assert all(not r.get("timings_1_thread") for r in data["results"])
    assert "bnorm 1T ms" not in result.stdout


def test_refuses_to_run_without_bnorm(tmp_path, torch):
    # a bnorm first on the path that cannot be imported hides any installed one
    (tmp_path / "bnorm").mkdir()
    (tmp_path / "bnorm" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    result = run_compare("--smoke", "--json", str(tmp_path / "r.json"), pythonpath=tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert "no report without bnorm" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_help_lists_the_modes():
    result = run_compare("--help")
    assert result.returncode == 0
    for option in ("--smoke", "--quick", "--threads", "--no-scaling", "--png", "inception-192"):
        assert option in result.stdout
