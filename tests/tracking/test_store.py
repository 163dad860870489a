"""Which store and which paths a config means, wherever the command is launched from; reading
a store whole: every page of a search, metric histories in bulk."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Metric
from support.server import Server
from support.stores import clone_runs, store_uri

from hw3.tracking import reading
from hw3.tracking.reading import find_runs, metric_histories
from hw3.tracking.schema import PROJECT_ROOT, resolve_path
from hw3.tracking.store import Store, connect, experiment_id, resolve_uri
from hw3.tracking.sweep import close_sweep

DEFAULT = f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
ROOTED = f"sqlite:///{PROJECT_ROOT / 'rel' / 'env.db'}"


@pytest.fixture(autouse=True)
def launched_elsewhere(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case runs from a folder that is not the project root."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("explicit", "environment", "expected"),
    [
        ("sqlite:////abs/x.db", "sqlite:////abs/env.db", "sqlite:////abs/x.db"),
        ("http://127.0.0.1:5000", "sqlite:////abs/env.db", "http://127.0.0.1:5000"),
        (None, "sqlite:////abs/env.db", "sqlite:////abs/env.db"),
        (None, "sqlite:///rel/env.db", ROOTED),
        (None, None, DEFAULT),
    ],
    ids=["explicit", "explicit-server", "environment", "environment-relative", "default"],
)
def test_the_store_is_the_explicit_uri_then_the_environment_s_then_the_project_s(
    monkeypatch: pytest.MonkeyPatch, explicit, environment, expected
):
    if environment is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", environment)
    assert resolve_uri(explicit) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///rel/mlflow.db", f"sqlite:///{PROJECT_ROOT / 'rel' / 'mlflow.db'}"),
        ("sqlite:///../up/mlflow.db", f"sqlite:///{PROJECT_ROOT.parent / 'up' / 'mlflow.db'}"),
        ("rel/store", (PROJECT_ROOT / "rel" / "store").as_uri()),  # a bare folder: a file store
        ("/abs/store", "file:///abs/store"),
    ],
)
def test_relative_store_paths_resolve_from_the_project_root(uri, expected):
    assert resolve_uri(uri) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data", PROJECT_ROOT / "data"),
        ("outputs/checkpoints", PROJECT_ROOT / "outputs" / "checkpoints"),
        ("/abs/data", "/abs/data"),
    ],
)
def test_relative_config_paths_resolve_from_the_project_root(path, expected):
    assert str(resolve_path(path)) == str(expected)


# --- reading a store whole ----------------------------------------------------------------------

MLFLOW_PAGE = 1000  # what one search call returns unless asked for more


@pytest.mark.slow
def test_a_sweep_of_more_jobs_than_a_page_fails_for_a_failed_job_beyond_the_first_page(
    tmp_path,
):
    store = connect(store_uri(tmp_path))
    experiment = experiment_id(store, "large")
    parent = store.client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    child = {"kind": "train", "mlflow.parentRunId": parent}
    failed = store.client.create_run(experiment, start_time=1_000, tags=child).info.run_id
    store.client.set_terminated(failed, "FAILED")
    finished = store.client.create_run(experiment, start_time=2_000, tags=child).info.run_id
    store.client.set_terminated(finished, "FINISHED")
    clone_runs(tmp_path / "mlflow.db", finished, range(2_001, 2_001 + MLFLOW_PAGE + 48))
    children = find_runs(store, experiment, **{"mlflow.parentRunId": parent})
    assert len(children) == MLFLOW_PAGE + 50
    assert len({r.info.run_id for r in children}) == MLFLOW_PAGE + 50
    assert children[-1].info.run_id == failed  # newest first: the 1,050th
    status = close_sweep(store, experiment, parent, completed=True, stale_after_s=60.0)
    assert status == "FAILED"


BULK = {"sqlite": True, "server": True, "server without the bulk endpoint": False, "file": False}


@pytest.fixture(params=list(BULK))
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, bool]]:
    """A real store of each kind, and whether it reads histories in bulk: SQLite and the
    tracking server do; an older server (no bulk endpoint) and MLflow's file store read them
    run by run."""
    # Several bulk reads per metric, and answers cut short as the server's 25,000 cuts them.
    monkeypatch.setattr(reading, "BULK_RUNS", 2)
    monkeypatch.setattr(reading, "SQL_RUNS", 2)
    monkeypatch.setattr(reading, "BULK_POINTS", 13)  # two runs of 6 points fit
    if request.param == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield connect(str(tmp_path / "mlruns")), False  # a bare folder: MLflow's file store
        return
    if request.param == "sqlite":
        yield connect(store_uri(tmp_path)), True
        return
    if request.param == "server without the bulk endpoint":
        missing = reading.BULK_ENDPOINT.replace("get-history-bulk", "no-such-endpoint")
        monkeypatch.setattr(reading, "BULK_ENDPOINT", missing)
    with Server(tmp_path) as server:
        yield connect(f"http://{server.address}"), BULK[request.param]


def points(history: list[Metric]) -> list[tuple[int, str, int]]:
    """(step, value as text: NaN equals NaN, timestamp) of each point, sorted."""
    return sorted((m.step, repr(m.value), m.timestamp) for m in history)


@pytest.mark.slow
def test_histories_read_in_bulk_are_every_point_of_every_run(
    any_store: tuple[Store, bool], monkeypatch: pytest.MonkeyPatch
):
    any_store, bulk = any_store
    experiment = experiment_id(any_store, "histories")
    values = [0.5, math.nan, math.inf, -math.inf, 2.0]
    logged = {}
    for i in range(5):
        run_id = any_store.client.create_run(experiment).info.run_id
        metrics = [Metric("loss", v * (i + 1), 1_000 + s, s) for s, v in enumerate(values)]
        metrics += [Metric("loss", 9.0 + i, 2_000, 1)]  # logged again (a resumed pass)
        if i % 2:
            metrics += [Metric("acc", 0.1 * s, 1_000 + s, s) for s in range(3)]
        any_store.client.log_batch(run_id, metrics=metrics)
        logged[run_id] = sorted({m.key for m in metrics})
    # More points than one bulk answer holds: read again run by run.
    long_run = any_store.client.create_run(experiment).info.run_id
    cut = reading.BULK_POINTS
    history = [Metric("loss", float(s), s, s) for s in range(cut + 1)]
    any_store.client.log_batch(long_run, metrics=history)
    logged[long_run] = ["loss"]
    read_one: list[tuple[str, str]] = []  # the histories read run by run
    one = any_store.client.get_metric_history
    monkeypatch.setattr(
        any_store.client, "get_metric_history", lambda r, k: read_one.append((r, k)) or one(r, k)
    )
    found: dict[tuple[str, str], list[Metric]] = {}
    for run_id, key, step, value, timestamp in metric_histories(any_store, logged):
        found.setdefault((run_id, key), []).append(Metric(key, value, timestamp, step))
    read_in_bulk = list(read_one)  # not the reads below
    expected = {
        (run_id, key): points(any_store.client.get_metric_history(run_id, key))
        for run_id, keys in logged.items()
        for key in keys
    }
    assert {k: points(v) for k, v in found.items()} == expected
    assert len(expected[long_run, "loss"]) == cut + 1
    if bulk:  # only the runs of the answer cut short are read again one by one
        assert set(read_in_bulk) <= {(r, "loss") for r in list(logged)[-2:]}
    else:
        assert sorted(read_in_bulk) == sorted(expected)
