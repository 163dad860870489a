"""Fixtures of the analysis tests: an empty SQLite store per test, its schema made once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from logged_runs import EXPERIMENT
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with MLflow's schema, made once: creating the schema takes seconds."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, empty_db: Path) -> tuple[str, MlflowClient, str]:
    """An empty SQLite store with experiment EXPERIMENT: (uri, client, experiment id)."""
    uri = f"sqlite:///{shutil.copy(empty_db, tmp_path / 'mlflow.db')}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, (tmp_path / "artifacts").as_uri())
    return uri, client, exp
