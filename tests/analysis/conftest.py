"""Fixtures of the analysis tests: an empty SQLite store per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from logged_runs import EXPERIMENT
from mlflow.tracking import MlflowClient
from support.stores import seeded_store


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    """An empty SQLite store with experiment EXPERIMENT: (uri, client, experiment id)."""
    uri = seeded_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, (tmp_path / "artifacts").as_uri())
    return uri, client, exp
