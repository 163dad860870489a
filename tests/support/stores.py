"""SQLite stores for tests: MLflow's schema made once and copied, runs copied by SQL."""

from __future__ import annotations

import atexit
import functools
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

from mlflow.tracking import MlflowClient


def store_uri(where: Path | str) -> str:
    """A tracking URI: `where` itself, or the SQLite store a test keeps in folder `where`."""
    return f"sqlite:///{where / 'mlflow.db'}" if isinstance(where, Path) else where


@functools.cache
def empty_store() -> Path:
    """An empty SQLite store with MLflow's whole schema, made once per test process (migrating
    a new store takes seconds): the template `seeded_store` copies."""
    folder = Path(tempfile.mkdtemp(prefix="hw3-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(store_uri(folder)).search_experiments(max_results=1)  # migrates it
    return folder / "mlflow.db"


def seeded_store(tmp: Path) -> str:
    """The URI of the store in folder `tmp`, a copy of `empty_store` if it has none yet: a
    schema copied in milliseconds instead of migrated in a second or more. (A test of how a
    new store is created passes its own `uri` instead.)"""
    db = tmp / "mlflow.db"
    if not db.exists():
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store(), db)
    return store_uri(tmp)


def clone_runs(db: Path, run_id: str, start_times: Iterable[int]) -> list[str]:
    """Copies of run `run_id` (its row and its tags) in the SQLite store `db`, one per start
    time, written by SQL: MLflow's client takes about 0.1 s a run here, too slow for a test of
    more than a page of runs. Their ids."""
    with sqlite3.connect(db) as con:
        columns = [row[1] for row in con.execute("PRAGMA table_info(runs)")]
        chosen = ", ".join("?" if c in ("run_uuid", "start_time") else c for c in columns)
        insert = (
            f"INSERT INTO runs ({', '.join(columns)}) SELECT {chosen} FROM runs WHERE run_uuid = ?"
        )
        order = [c for c in columns if c in ("run_uuid", "start_time")]
        ids = []
        for start in start_times:
            new = uuid.uuid4().hex
            given = {"run_uuid": new, "start_time": start}
            con.execute(insert, [*(given[c] for c in order), run_id])
            con.execute(
                "INSERT INTO tags (key, value, run_uuid) SELECT key, value, ? FROM tags "
                "WHERE run_uuid = ?",
                (new, run_id),
            )
            ids.append(new)
    return ids
