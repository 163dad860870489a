"""scripts/mlflow-ui: binds 127.0.0.1 and PORT, marks the project's experiments as model
training and prints the links that open them in the UI's Model training view."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from logged_runs import log_run
from mlflow.tracking import MlflowClient
from support.cli import stand_in_project
from support.stores import seeded_store

from hw3.analysis.ui import KIND_TAG, MODEL_TRAINING

FILES = (
    "scripts/mlflow-ui",
    "scripts/setup",
    "pyproject.toml",
    "hw3/__init__.py",
    "hw3/analysis/__init__.py",
    "hw3/analysis/ui.py",
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The real script and what it runs, in a stand-in project (its mlflow prints its arguments)."""
    return stand_in_project(tmp_path, FILES)


def launch(project: Path, **env: str) -> list[str]:
    """Run the script; its output lines (the stand-in mlflow's arguments last)."""
    base = {"PATH": os.environ["PATH"], "HOME": str(project.parent)}
    base["HW3_VENV"] = str(project.parent / "venv")
    result = subprocess.run(
        ["bash", str(project / "scripts" / "mlflow-ui")],
        capture_output=True,
        text=True,
        env=base | env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def served(lines: list[str]) -> dict[str, str]:
    """The options the UI was started with."""
    args = lines[-1].split()
    assert args[:2] == ["mlflow", "ui"]
    return dict(zip(args[2::2], args[3::2], strict=True))


@pytest.mark.slow
def test_the_ui_binds_loopback_and_port_and_opens_on_model_training(project):
    db = project / "mlruns" / "mlflow.db"
    client = MlflowClient(seeded_store(db.parent))
    smoke = client.create_experiment("hw3-smoke")
    log_run(client, smoke, "plain", 0)
    chosen = client.create_experiment("hw3-mine", tags={KIND_TAG: "genai_development"})
    log_run(client, chosen, "plain", 0)
    other = client.create_experiment("someone-else")  # no run hw3 logged
    lines = launch(project, PORT="5123")
    assert served(lines) == {
        "--backend-store-uri": f"sqlite:///{db}",
        "--host": "127.0.0.1",
        "--port": "5123",
    }
    assert (
        lines[0]
        == "The MLflow UI: http://127.0.0.1:5123/#/experiments?workflowType=machine_learning"
    )
    assert f"Marked as model training ({KIND_TAG}): hw3-smoke" in lines
    view = "runs?workflowType=machine_learning"
    assert f"  hw3-smoke: http://127.0.0.1:5123/#/experiments/{smoke}/{view}" in lines
    assert f"  hw3-mine: http://127.0.0.1:5123/#/experiments/{chosen}/{view}" in lines
    assert not [line for line in lines if "someone-else" in line]
    assert client.get_experiment(smoke).tags[KIND_TAG] == MODEL_TRAINING
    assert client.get_experiment(chosen).tags[KIND_TAG] == "genai_development"  # a choice kept
    assert KIND_TAG not in client.get_experiment(other).tags
    again = launch(project)  # marked once; port 5000 by default
    assert served(again)["--port"] == "5000"
    assert not [line for line in again if line.startswith("Marked")]


def test_without_a_store_the_ui_starts_on_an_empty_one(project, tmp_path):
    lines = launch(project, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    assert lines[1] == f"No runs yet: {tmp_path / 'new' / 'mlflow.db'} does not exist."
    assert served(lines)["--backend-store-uri"] == f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    assert served(lines)["--host"] == "127.0.0.1"
