"""Run examples/batchnorm_paper_figure1.ipynb from top to bottom; fail if any cell raises.

Needs the packages of examples/requirements.txt, which the test extras install: a missing one is a failure,
not a skip. The notebook runs in a temporary copy, so the committed notebook, with its stored outputs, and its
PNG figures stay untouched.
"""

import json
import os
import shutil
from pathlib import Path

import ipykernel.kernelspec as ipykernel_kernelspec
import matplotlib  # noqa: F401  (the notebook's packages: fail here, clearly, if one is missing)
import nbclient
import nbformat
import sklearn  # noqa: F401
import threadpoolctl  # noqa: F401
import tqdm  # noqa: F401

import bnorm

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOK = "batchnorm_paper_figure1.ipynb"


def test_batchnorm_paper_figure1_notebook(tmp_path, monkeypatch):
    work = tmp_path / "examples"
    work.mkdir()
    for name in (NOTEBOOK, "mlp.py"):
        shutil.copy(EXAMPLES / name, work / name)

    # Kernel "python3" = this interpreter (sys.executable), whatever other kernels are installed.
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps(ipykernel_kernelspec.get_kernel_dict()))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel is a subprocess: let it import the bnorm this test imported (an installed
    # package in CI, an in-place build in a checkout), not whatever its working directory holds.
    bnorm_home = str(Path(bnorm.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [bnorm_home, os.environ.get("PYTHONPATH")])))

    nb = nbformat.read(work / NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises nbclient.exceptions.CellExecutionError if a cell raises

    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.outputs if out.output_type == "error"]
    assert not errors
    for png in ("figure1_reproduction.png", "learning_rates.png"):
        assert (work / png).stat().st_size > 10_000, png
