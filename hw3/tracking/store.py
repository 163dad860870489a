"""Connecting to the tracking store: its URI, a new SQLite store's schema, a server's reachability,
experiments, and where a run's checkpoints live beside the store."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient

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
