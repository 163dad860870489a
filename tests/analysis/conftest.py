"""Fixtures of the analysis tests: an empty SQLite store per test, its schema made once."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import empty_store, seeded_store
from logged_runs import EXPERIMENT
from mlflow.tracking import MlflowClient


@pytest.fixture(scope="session")
def empty_db() -> Path:
    """A SQLite store with MLflow's schema, made once: creating the schema takes seconds."""
    return empty_store()


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    """An empty SQLite store with experiment EXPERIMENT: (uri, client, experiment id)."""
    uri = seeded_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, (tmp_path / "artifacts").as_uri())
    return uri, client, exp
