"""Logging to a run: metrics, params and tags in one request, the dataset it trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from hw3.tracking.store import Store


def log_values(
    store: Store,
    run_id: str,
    *,
    metrics: dict[str, float] | None = None,
    step: int = 0,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    timestamp_ms: int = 0,
) -> None:
    """Log metrics (at `step`), params and tags in one request."""
    store.client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), timestamp_ms, step) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def log_dataset(
    store: Store, run_id: str, *, name: str, digest: str, source: Path, profile: dict[str, Any]
) -> None:
    """Record the data a run trains on as its MLflow dataset input (the UI's Dataset column)."""
    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local",
        source=json.dumps({"uri": source.resolve().as_uri()}),
        profile=json.dumps(profile, sort_keys=True),
    )
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    try:
        store.client.log_inputs(run_id, datasets=inputs)
    except MlflowException:  # another job inserted the same dataset at the same moment: it is there
        store.client.log_inputs(run_id, datasets=inputs)
