"""Reading the store: searches that page through every run, and metric histories in bulk.

The one place that uses MLflow's internals, for speed at thousands of runs: from a SQL store,
the query behind `SqlAlchemyStore.get_metric_history_bulk` (its `SqlMetric` table, through its
session); from a tracking server, the bulk endpoint its UI plots from (`RestStore`'s host
credentials and `http_request`). The public client has neither: it reads one run's history per
call.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from mlflow.entities import Run
from mlflow.store.tracking.dbmodels.models import SqlMetric
from mlflow.store.tracking.rest_store import RestStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.rest_utils import http_request, verify_rest_response
from sqlalchemy import select
from tqdm import tqdm

from hw3.tracking.store import Store

# Runs per search call: MLflow's default. Pages of 100, 1,000 and 50,000 read a 1,000-run
# SQLite store within 15% of each other, and each page moves the progress bar.
SEARCH_PAGE = 1_000
# The tracking server's limits on its bulk history endpoint (the one its UI plots from).
BULK_ENDPOINT = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_RUNS, BULK_POINTS = 100, 25_000  # runs per request; points per answer
SQL_RUNS = 500  # runs whose metrics one SQL query reads (each id is one SQL parameter)
FETCH_THREADS = 8  # history requests in flight
PROGRESS_AFTER_S = 2.0  # a fetch shows a progress bar once it has taken this long


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


def logged_steps(store: Store, run_id: str, key: str) -> set[int]:
    """The steps at which `key` was logged in run `run_id`."""
    return {m.step for m in store.client.get_metric_history(run_id, key)}
