"""MLflow plumbing: the store, experiments, runs, and what a run records about itself."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# MLflow's telemetry thread, failing to reach its config server (offline), unsets an environment
# variable while `requests` iterates os.environ, and the tracking-server call in flight then fails
# with KeyError. So telemetry is off here unless asked for (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hw3.tracking.schema import PROJECT_ROOT

DEFAULT_STORE = PROJECT_ROOT / "mlruns"
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
PROBE_TIMEOUT_S = 5  # how long an unreachable server may keep a launch waiting
# Environment that a sweep's launching process hands its jobs (see hw3.tracking.sweep).
ENV_EXPERIMENT, ENV_EXPERIMENT_ID = "HW3_EXPERIMENT", "HW3_EXPERIMENT_ID"
ENV_PARENT, ENV_SWEEP = "HW3_PARENT_RUN_ID", "HW3_SWEEP_ID"
_CREDENTIALS = re.compile(r"(?<=://)[^/@\s'\"]+@")  # user:password@ in a URL


class TrackingError(RuntimeError):
    """The tracking store cannot be used as configured."""


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it (user:password@) replaced by ***@."""
    return _CREDENTIALS.sub("***@", text)


@dataclass(frozen=True)
class Store:
    """A connected tracking store."""

    uri: str
    client: MlflowClient


def resolve_uri(uri: str | None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else the project's SQLite store; checked for a scheme."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"
    scheme = urlparse(uri).scheme
    if scheme == "":
        return Path(uri).expanduser().resolve().as_uri()  # a plain folder: MLflow's file store
    if scheme.split("+")[0] not in SCHEMES:
        raise TrackingError(
            f"unknown tracking URI scheme {scheme!r} in {redact(uri)!r}; use "
            "sqlite:///PATH/mlflow.db, http://HOST:PORT or leave tracking.uri=null "
            "for the project store"
        )
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser()


def _check_reachable(uri: str) -> None:
    parts = urlparse(uri)
    host = parts.netloc.rpartition("@")[2]  # urllib takes user:password@ for part of the host
    try:
        with urllib.request.urlopen(
            f"{parts.scheme}://{host}{parts.path.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S
        ):
            pass
    except urllib.error.HTTPError:
        return  # it answered, if only to ask for the credentials that MLflow's calls will send
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(
            f"tracking server {redact(uri)} is unreachable ({reason}); start it with "
            "scripts/mlflow-server or point tracking.uri elsewhere"
        ) from err


def connect(uri: str | None, *, probe: bool = True) -> Store:
    """Open the store (creating a SQLite store's folder and schema) or fail in one line.

    `probe=False` skips the quick check that a server answers: calls then wait out a server
    restart on MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, …_BACKOFF_FACTOR).
    """
    uri = resolve_uri(uri)
    if (db := _sqlite_path(uri)) is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(db.parent, os.W_OK):
                raise PermissionError(f"{db.parent} is not writable")
        except OSError as err:
            raise TrackingError(
                f"cannot use the tracking store folder {db.parent} ({err}); "
                "choose a writable one with tracking.uri=sqlite:///PATH/mlflow.db"
            ) from err
    if probe and urlparse(uri).scheme in ("http", "https"):
        _check_reachable(uri)
    client = MlflowClient(uri)
    try:
        client.search_experiments(max_results=1)  # creates or migrates a database's schema
    except MlflowException as err:
        raise TrackingError(
            f"cannot open tracking store {redact(uri)}: {err.message.splitlines()[0]}"
        ) from err
    return Store(uri, client)


def connect_existing(uri: str | None) -> Store:
    """Like `connect`, but a SQLite store must already exist: reading never creates one."""
    uri = resolve_uri(uri)
    if (db := _sqlite_path(uri)) is not None and not db.is_file():
        raise TrackingError(
            f"no tracking store at {db}; run a sweep first or point tracking.uri at one"
        )
    return connect(uri)


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: beside a SQLite database, else the store's choice."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "artifacts" / experiment).resolve().as_uri()


def experiment_id(store: Store, name: str) -> str:
    """The id of experiment `name`, created if need be (safe if another process races us)."""
    experiment = store.client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return store.client.create_experiment(name, artifact_location(store.uri, name))
        except MlflowException:
            experiment = store.client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            "or choose another tracking.experiment"
        )
    return experiment.experiment_id


def find_runs(store: Store, experiment: str, **tags: str) -> list:
    """Runs of `experiment` whose tags equal `tags`, newest first."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return store.client.search_runs([experiment], where, order_by=["attributes.start_time DESC"])


def fingerprint(values: dict[str, Any]) -> str:
    """A short stable hash of a flat config."""
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_state() -> dict[str, str]:
    """The project's commit and whether its working tree is dirty ('unknown' outside git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        return {
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": str(bool(git("status", "--porcelain"))).lower(),
        }
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}


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


def logged_steps(store: Store, run_id: str, key: str) -> set[int]:
    """The steps at which `key` was logged in run `run_id`."""
    return {m.step for m in store.client.get_metric_history(run_id, key)}


def close_sweep(store: Store, experiment: str, parent_id: str, *, completed: bool) -> str:
    """End a sweep's parent run: FINISHED if the sweep completed and every child finished."""
    children = find_runs(store, experiment, **{"mlflow.parentRunId": parent_id})
    ok = completed and all(r.info.status == "FINISHED" for r in children)
    status = "FINISHED" if ok else "FAILED"
    store.client.set_terminated(parent_id, status)
    return status
