"""MLflow plumbing: the store, experiments, runs, and what a run records about itself."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# MLflow's telemetry thread, failing to reach its config server (offline), unsets an environment
# variable while `requests` iterates os.environ, and the tracking-server call in flight then fails
# with KeyError. So telemetry is off here unless asked for (MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.rest_store import RestStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.utils.rest_utils import http_request, verify_rest_response
from sqlalchemy import select
from tqdm import tqdm

from hw3.tracking.claim import file_lock
from hw3.tracking.errors import first_line
from hw3.tracking.schema import PROJECT_ROOT

log = logging.getLogger("hw3")

DEFAULT_STORE = PROJECT_ROOT / "mlruns"
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
PROBE_TIMEOUT_S = 5  # how long an unreachable server may keep a launch waiting
SCHEMA_WAIT_S = 60  # how long to wait for another process to finish a new store's schema
# The experiments' kind, so that MLflow 3's UI shows them as model training, not GenAI.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Runs per search call: MLflow's default. Pages of 100, 1,000 and 50,000 read a 1,000-run
# SQLite store within 15% of each other, and each page moves the progress bar.
SEARCH_PAGE = 1_000
# The tracking server's limits on its bulk history endpoint (the one its UI plots from).
BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_RUNS, BULK_POINTS = 100, 25_000  # runs per request; points per answer
SQL_RUNS = 500  # runs whose metrics one SQL query reads (each id is one SQL parameter)
FETCH_THREADS = 8  # history requests in flight
PROGRESS_AFTER_S = 2.0  # a fetch shows a progress bar once it has taken this long
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
    """`uri`, else $MLFLOW_TRACKING_URI, else the project's SQLite store; checked for a scheme.

    Relative paths (sqlite:///rel/mlflow.db, a bare folder) resolve from the project root.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"
    scheme = urlparse(uri).scheme
    if scheme == "":
        return _from_root(uri).as_uri()  # a plain folder: MLflow's file store
    if scheme.split("+")[0] not in SCHEMES:
        raise TrackingError(
            f"unknown tracking URI scheme {scheme!r} in {redact(uri)!r}; use "
            "sqlite:///PATH/mlflow.db, http://HOST:PORT or leave tracking.uri=null "
            "for the project store"
        )
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{_from_root(uri.removeprefix('sqlite:///'))}"
    return uri


def _from_root(path: str) -> Path:
    """`path` made absolute, a relative one from the project root."""
    p = Path(path).expanduser()
    return (p if p.is_absolute() else PROJECT_ROOT / p).resolve()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser()


def local_folder(root: Path, store: Store, experiment: str) -> Path:
    """The folder under `root` for files of one experiment of one store (checkpoints, claims):
    never shared with another store, whichever the experiment's id there."""
    db = _sqlite_path(store.uri)
    where = str(db.resolve()) if db is not None else redact(store.uri).rstrip("/").lower()
    return root / hashlib.sha256(where.encode()).hexdigest()[:12] / experiment


# Where checkpoints went by default before they moved beside their store.
OLD_CHECKPOINTS = PROJECT_ROOT / "outputs" / "checkpoints"
SERVER_CHECKPOINTS = Path("~/.cache/hw3/checkpoints").expanduser()


def checkpoint_folder(setting: str | None, store: Store, experiment: str) -> Path:
    """The folder for one experiment's checkpoints and claims (trainer.checkpoint_dir=`setting`).

    null: beside the store, as SQLite's own side files are: <db>-checkpoints/<experiment> (the
    project store's: mlruns/mlflow.db-checkpoints/1); for a server or another kind of store,
    ~/.cache/hw3/checkpoints/<its address>/<experiment>. What an earlier version left in
    outputs/checkpoints/<12-hex>/<experiment> is moved there first, so it still resumes.
    A folder: `local_folder` under it (relative: from the project root).
    """
    if setting is not None:
        return local_folder(_from_root(setting), store, experiment)
    db = _sqlite_path(store.uri)
    if db is not None:
        folder = db.resolve().parent / f"{db.name}-checkpoints" / experiment
    else:
        address = re.sub(r"[^\w.]+", "-", redact(store.uri).lower()).strip("-")
        folder = SERVER_CHECKPOINTS / address / experiment
    old = local_folder(OLD_CHECKPOINTS, store, experiment)
    if old.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for entry in old.iterdir():
            try:  # a rename is atomic: of two jobs moving one file, one moves it
                if not (folder / entry.name).exists():
                    entry.rename(folder / entry.name)
            except FileNotFoundError:
                pass
            except OSError as e:  # another filesystem
                log.warning("checkpoint %s not moved (%s): move it to %s", entry, e, folder)
    return folder


def _create_sqlite_store(db: Path) -> None:
    """Give a new SQLite store its schema in a private file, then publish that file at once.

    MLflow creates a schema in place, migration by migration; two processes doing that on one
    file leave it half-migrated for good. Here one process (of ours) builds it beside the file
    and links it in place, which fails harmlessly if the file appeared in the meantime.
    """
    with file_lock(db.with_name(f".{db.name}.lock")):
        if db.exists():
            return
        tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
        tmp.unlink(missing_ok=True)
        try:
            SqlAlchemyStore(f"sqlite:///{tmp}", db.parent.as_uri()).engine.dispose()
            os.link(tmp, db)
        except FileExistsError:
            pass  # another program created it: wait for its schema in `connect`
        finally:
            tmp.unlink(missing_ok=True)


def _open_client(uri: str) -> MlflowClient:
    """A client whose store's schema is complete, waiting while another process migrates it."""
    deadline = time.monotonic() + SCHEMA_WAIT_S
    while True:
        client = MlflowClient(uri)
        try:
            client.search_experiments(max_results=1)  # creates or checks the schema
            return client
        except MlflowException as err:
            # "out-of-date database schema" while someone else migrates a new store in place
            if "out-of-date" not in err.message or time.monotonic() > deadline:
                raise
        time.sleep(0.5)


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
    db = _sqlite_path(uri)
    if db is not None:
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
    try:
        if db is not None and not db.exists():
            _create_sqlite_store(db)
        client = _open_client(uri)
    except MlflowException as err:
        raise TrackingError(f"cannot open tracking store {redact(uri)}: {first_line(err)}") from err
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
            location = artifact_location(store.uri, name)
            return store.client.create_experiment(name, location, EXPERIMENT_TAGS)
        except MlflowException:
            experiment = store.client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment {name!r} is deleted; restore it (mlflow experiments restore) "
            "or choose another tracking.experiment"
        )
    for key, value in EXPERIMENT_TAGS.items():  # experiments made before hw3 tagged them
        if experiment.tags.get(key) != value:
            store.client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for a fetch, which builds objects by the
    hundred thousand (MLflow's, one per tag, param or point) and frees none: collecting every
    700 of them took half of a search's time here."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


def progress(total: int | None, desc: str, unit: str) -> tqdm:
    """A progress bar on stderr for a fetch, shown once it has taken PROGRESS_AFTER_S (on a
    terminal, as training's are)."""
    return tqdm(total=total, desc=desc, unit=unit, delay=PROGRESS_AFTER_S, disable=None)


def search_runs(store: Store, experiment_ids: Sequence[str], where: str) -> list[Run]:
    """Every run of the experiments that matches the MLflow filter `where`, newest first: all
    pages (MLflow returns one page per call)."""
    # A page starts at an offset: a run started meanwhile repeats one, which counts once.
    runs: dict[str, Run] = {}
    token = None
    with _collector_paused(), progress(None, "runs", "run") as bar:
        while True:
            page = store.client.search_runs(
                list(experiment_ids),
                where,
                max_results=SEARCH_PAGE,
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs |= {r.info.run_id: r for r in page if r.info.run_id not in runs}
            bar.update(len(page))
            if not (token := page.token):
                return list(runs.values())


def find_runs(store: Store, experiment: str, **tags: str) -> list[Run]:
    """Runs of `experiment` whose tags equal `tags`, newest first (all of them)."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return search_runs(store, [experiment], where)


Point = tuple[str, str, int, float, int]  # run id, metric key, step, value, timestamp (ms)


class _NoBulkEndpoint(Exception):
    """The server has no bulk history endpoint (an older or proxied server)."""


def _backend(store: Store) -> object:
    """The MLflow store object behind the client (a SqlAlchemyStore, a RestStore, ...)."""
    return store.client._tracking_client.store


def metric_histories(store: Store, metrics: Mapping[str, Sequence[str]]) -> list[Point]:
    """Every logged point of the given metrics of each run (`metrics`: run id → keys), read in
    bulk where the store allows it: from a SQL store SQL_RUNS runs at a time, from the tracking
    server BULK_RUNS runs and one metric at a time, from other stores run by run."""
    backend = _backend(store)
    total = sum(map(len, metrics.values()))
    with _collector_paused(), progress(total, "metric histories", "history") as bar:
        if isinstance(backend, SqlAlchemyStore):
            return _from_sql(backend, metrics, bar)
        return _by_request(store, metrics, bar)


def _from_sql(
    backend: SqlAlchemyStore, metrics: Mapping[str, Sequence[str]], bar: tqdm
) -> list[Point]:
    """The points of a SQL store: the query of its get_metric_history_bulk, for all the metrics
    of SQL_RUNS runs at once, read as columns (an MLflow object per point took 9× as long)."""
    ids, points = list(metrics), []
    for i in range(0, len(ids), SQL_RUNS):
        runs = {r: r for r in ids[i : i + SQL_RUNS]}  # each id as one string object
        keys = {k: k for r in runs for k in metrics[r]}
        wanted = {(r, k) for r in runs for k in metrics[r]}
        query = select(
            SqlMetric.run_uuid,
            SqlMetric.key,
            SqlMetric.step,
            SqlMetric.value,
            SqlMetric.is_nan,
            SqlMetric.timestamp,
        ).where(SqlMetric.run_uuid.in_(list(runs)), SqlMetric.key.in_(list(keys)))
        with backend.ManagedSessionMaker() as session:  # a read per chunk: writers wait less
            rows = session.execute(query).all()
        points += [
            (runs[r], keys[k], step, math.nan if nan else value, timestamp)
            for r, k, step, value, nan, timestamp in rows
            if (r, k) in wanted
        ]
        bar.update(len(wanted))
    return points


def _bulk_request(backend: RestStore, run_ids: Sequence[str], key: str) -> list[Point]:
    """One metric's points of up to BULK_RUNS runs from the tracking server, by the endpoint
    its UI plots from (at most BULK_POINTS of them)."""
    query = [("run_id", r) for r in run_ids] + [("metric_key", key), ("max_results", BULK_POINTS)]
    response = http_request(backend.get_host_creds(), BULK_ENDPOINT, "GET", params=query)
    if response.status_code in (404, 405):
        raise _NoBulkEndpoint
    found = verify_rest_response(response, BULK_ENDPOINT).json().get("metrics", [])
    return [(m["run_id"], key, m["step"], float(m["value"]), m["timestamp"]) for m in found]


def _one_by_one(store: Store, run_ids: Sequence[str], key: str) -> list[Point]:
    """One metric's points of `run_ids`, a request per run."""
    return [
        (run_id, key, m.step, m.value, m.timestamp)
        for run_id in run_ids
        for m in store.client.get_metric_history(run_id, key)
    ]


def _by_request(store: Store, metrics: Mapping[str, Sequence[str]], bar: tqdm) -> list[Point]:
    """The points of a store read by requests, FETCH_THREADS at a time: in bulk from a
    tracking server that has the endpoint, else run by run; a bulk answer that may have been
    cut at BULK_POINTS is read again run by run."""
    backend = _backend(store)
    bulk = isinstance(backend, RestStore)
    runs_of: dict[str, list[str]] = {}
    for run_id, keys in metrics.items():
        for key in keys:
            runs_of.setdefault(key, []).append(run_id)
    calls = [
        (key, ids[i : i + BULK_RUNS])
        for key, ids in sorted(runs_of.items())
        for i in range(0, len(ids), BULK_RUNS)
    ]

    def read(call: tuple[str, list[str]]) -> list[Point]:
        nonlocal bulk
        key, run_ids = call
        if bulk:
            try:
                points = _bulk_request(backend, run_ids, key)
            except _NoBulkEndpoint:
                bulk = False  # an older server: so for the calls still to come
            else:
                if len(points) < BULK_POINTS:
                    return points
        return _one_by_one(store, run_ids, key)

    points: list[Point] = []
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for call, found in zip(calls, pool.map(read, calls), strict=True):
            points += found
            bar.update(len(call[1]))
    return points


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


def logged_steps(store: Store, run_id: str, key: str) -> set[int]:
    """The steps at which `key` was logged in run `run_id`."""
    return {m.step for m in store.client.get_metric_history(run_id, key)}
