"""The notebook API: a study loaded as analyze.py selects it, its runs and histories as tables,
selection by config values, findings and figures."""

from __future__ import annotations

import pytest
from logged_runs import EXPERIMENT, LR, PASSES, history, log_grid, log_run
from matplotlib.figure import Figure

from hw3.analysis import api


def test_runs_and_histories_as_tables(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"), n_seeds=2)
    failed = log_run(client, exp, "bn", 2, status="FAILED")
    study = api.load(EXPERIMENT, uri=uri)
    runs = api.runs(study).set_index("run")
    assert len(runs) == 5 and runs["used"].sum() == 4
    assert runs.loc[failed, ["status", "why", "group"]].tolist() == [
        "FAILED",
        "status FAILED",
        "bn",
    ]
    used = runs[runs["used"]]
    assert sorted(zip(used["model"], used["seed"], strict=True)) == [
        ("bn", 0),
        ("bn", 1),
        ("plain", 0),
        ("plain", 1),
    ]
    assert (used["optimizer.lr"] == LR).all()  # config values as numbers
    assert runs["model.name"].tolist() == runs["model"].tolist()
    points = api.history(study)
    assert list(points.columns) == ["run", "group", "seed", "pass", "metric", "value"]
    assert len(points) == 4 * PASSES * len(history("plain", 0))
    mine = points[(points["group"] == "bn") & (points["seed"] == 1)]
    assert mine[mine["metric"] == "test/acc"]["value"].tolist() == pytest.approx(
        history("bn", 1)["test/acc"]
    )


def test_selection_by_config_values(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"), n_seeds=2)
    for seed in range(2):
        log_run(client, exp, "bn", seed, params={"optimizer.lr": "0.1"})
    study = api.load(EXPERIMENT, uri=uri)
    assert study.groups == ("plain", "bn (optimizer.lr=0.04)", "bn (optimizer.lr=0.1)")
    fast = api.where(study, {"optimizer.lr": 0.1})
    assert fast.groups == ("bn",) and {r.seed for r in fast.runs} == {0, 1}
    assert set(fast.summary["model"]) == {"bn"} and set(fast.tidy["model"]) == {"bn"}
    assert api.where(study, model="bn").groups == (
        "bn (optimizer.lr=0.04)",
        "bn (optimizer.lr=0.1)",
    )
    assert api.where(study, {"optimizer.lr": [0.04, 0.1]}, seed=1).groups == study.groups
    assert {r.seed for r in api.where(study, seed=lambda s: s > 0).runs} == {1}
    with pytest.raises(api.AnalysisError, match="none of the study's 6 runs has"):
        api.where(study, model="stride")


def test_settings_findings_and_figures(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"))
    study = api.load(EXPERIMENT, uri=uri, errorbar="t", confidence=0.9)
    assert study.errorbar.label == "90% Student-t interval of the mean"
    found = api.findings(study, api.stability(study, uri=uri))
    assert found.stability is None  # one learning rate
    assert [(p.a, p.b) for p in found.whole_runs] == [("plain", "bn")] * 2
    for name, draw in api.FIGURES.items():
        fig = draw(found)
        assert (fig is None) == (name in ("landscape", "stability")), name
        assert fig is None or isinstance(fig, Figure)
    assert set(api.all_figures(found)) == {"smoothness", "curves", "time", "paired"}
    with pytest.raises(api.AnalysisError, match="invalid errorbar='ci'"):
        api.load(EXPERIMENT, uri=uri, errorbar="ci")
    with pytest.raises(api.AnalysisError, match="no experiment 'nope'"):
        api.load("nope", uri=uri)
