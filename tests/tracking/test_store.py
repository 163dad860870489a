"""Which store and which paths a config means, wherever the command is launched from."""

from __future__ import annotations

import pytest

from hw3.tracking.schema import PROJECT_ROOT, resolve_path
from hw3.tracking.store import resolve_uri

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
