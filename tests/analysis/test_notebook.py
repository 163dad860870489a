"""The example notebook runs, cell by cell, in a real Jupyter kernel against a real smoke sweep."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient
from support.cli import job_args, run_cli
from support.stores import seeded_store

from hw3.tracking.schema import PROJECT_ROOT

NOTEBOOK = PROJECT_ROOT / "examples" / "study.ipynb"


@pytest.mark.slow  # a sweep of six runs by run.py, then a Jupyter kernel
def test_the_example_notebook_runs_against_a_real_smoke_sweep(tmp_path, tiny_root, monkeypatch):
    uri = seeded_store(tmp_path)
    small = ["data.train_size=256", "data.test_size=128"]
    args = job_args(tmp_path, tiny_root, "hw3-smoke", *small, uri=uri)
    swept = run_cli("run.py", "-m", "experiment=smoke", *args)
    assert swept.returncode == 0, swept.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the kernel inherits it
    nb = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    NotebookClient(nb, timeout=300, kernel_name="python3", resources=resources).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [o.get("ename") for cell in code for o in cell.outputs if o.output_type == "error"] == []
    texts = ["".join(o.get("text", "")) for cell in code for o in cell.outputs]
    assert texts[0].startswith("6 runs in groups plain, bn, stride;")
    table = code[2].outputs[0]["data"]["text/plain"]
    assert table.count("FINISHED") == 6
    images = [o for cell in code[3:] for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the custom plot and the paired figure
    assert "L̂ (mean), bn − plain over seeds (0, 1):" in "".join(texts)
