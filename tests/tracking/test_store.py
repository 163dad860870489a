"""Which store and which paths a config means, wherever the command is launched from; reading
a store whole: every page of a search."""

from __future__ import annotations

import pytest
from helpers import clone_runs, store_uri

from hw3.tracking.schema import PROJECT_ROOT, resolve_path
from hw3.tracking.store import (
    connect,
    experiment_id,
    find_runs,
    resolve_uri,
)
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
