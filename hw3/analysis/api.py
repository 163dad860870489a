"""The analysis as a library, for notebooks and scripts: what `analyze.py` computes, as values.

    from hw3.analysis import api

    study = api.load("hw3-smoke")            # the runs analyze.py would use, aggregated
    api.runs(study)                          # one row per run: status, group, config values
    api.history(study)                       # one row per (run, pass, metric)
    bn = api.where(study, model="bn")        # the runs with these config values
    found = api.findings(study)              # every number REPORT.md states
    fig = api.paired_figure(found)           # each figure as a matplotlib Figure

Settings (`errorbar`, `confidence`, `bootstrap.*`, `stability.*`) default to conf/analyze.yaml's
and take its keys as overrides: `api.load("hw3-smoke", errorbar="t")`. The store is `uri`, else
$MLFLOW_TRACKING_URI, else the project's; runs are selected as analyze.py selects them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hw3.analysis import config
from hw3.analysis.figures import (
    FIGURES,
    all_figures,
    curves_figure,
    landscape_figure,
    paired_figure,
    rates_figure,
    smoothness_figure,
    time_figure,
)
from hw3.analysis.findings import Findings, compute
from hw3.analysis.job import Settings, settings
from hw3.analysis.stability import Stability, load_stability
from hw3.analysis.study import AnalysisError, Study, load_study, runs_table
from hw3.analysis.study import where as select_where
from hw3.tracking.schema import PROJECT_ROOT, register
from hw3.tracking.store import connect_existing

__all__ = [
    "FIGURES",
    "AnalysisError",
    "Findings",
    "Stability",
    "Study",
    "all_figures",
    "analysis_settings",
    "curves_figure",
    "findings",
    "history",
    "landscape_figure",
    "load",
    "paired_figure",
    "rates_figure",
    "runs",
    "smoothness_figure",
    "stability",
    "time_figure",
    "where",
]


def analysis_settings(**overrides: Any) -> Settings:
    """conf/analyze.yaml's settings with `overrides` (keys as on analyze.py's command line,
    dots as in `bootstrap.resamples`), checked as analyze.py checks them."""
    register()
    config.register()
    given = [f"{key}={value}" for key, value in overrides.items()]
    with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("analyze", overrides=given)
    return settings(OmegaConf.to_object(cfg))


def load(
    experiment: str,
    *,
    uri: str | None = None,
    sweep_id: str | None = None,
    filter: str | None = None,  # analyze.py's name for it
    **overrides: Any,
) -> Study:
    """The experiment's training runs (of one sweep if `sweep_id`, narrowed by an MLflow
    `filter`), their histories and aggregates over seeds, as analyze.py selects them."""
    bar = analysis_settings(**overrides).errorbar
    store = connect_existing(uri)
    return load_study(store, experiment, sweep_id=sweep_id, filter_string=filter, errorbar=bar)


def runs(study: Study) -> pd.DataFrame:
    """One row per selected run, used or left out (`used`, `why`): identity, group, status,
    divergence, engine version, and one column per config value (numbers as numbers)."""
    return runs_table(study)


def history(study: Study) -> pd.DataFrame:
    """Every logged point of the used runs: one row per run, pass and metric (columns run,
    group, seed, pass, metric, value; a resumed run's repeated pass counts once)."""
    return study.tidy.rename(columns={"model": "group"})


def where(study: Study, values: dict[str, Any] | None = None, **more: Any) -> Study:
    """The study of the runs with these config values, regrouped and aggregated again. A value
    is matched as text or number, a list matches any of its items, a function is a test:
    `where(study, model="bn")`, `where(study, {"optimizer.lr": [0.04, 0.1]})`."""
    return select_where(study, (values or {}) | more)


def stability(study: Study, *, uri: str | None = None, **overrides: Any) -> Stability | None:
    """Stability across learning rates, with its reference L̂ from `stability.*`; None unless a
    model's runs differ in learning rate."""
    chosen = analysis_settings(**overrides)
    store = connect_existing(uri)
    return load_stability(store, study, chosen.reference_experiments, chosen.reference_lr)


def findings(study: Study, stability: Stability | None = None) -> Findings:
    """Every number the report states and the figures draw."""
    return compute(study, stability)
