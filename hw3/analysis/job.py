"""One analysis: an experiment's training runs → figures, summary.csv, REPORT.md → an MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from hw3.analysis.config import AnalyzeConfig
from hw3.analysis.figures import draw_all
from hw3.analysis.intervals import KINDS, ErrorBar
from hw3.analysis.report import RUNS_CSV, write_report, write_runs, write_summary
from hw3.analysis.stability import Stability, load_stability
from hw3.analysis.study import AnalysisError, Study, load_study
from hw3.tracking.claim import now_ms
from hw3.tracking.store import (
    Store,
    connect_existing,
    fingerprint,
    git_state,
    log_values,
)

log = logging.getLogger("hw3")


@dataclass(frozen=True)
class Settings:
    """How to aggregate and what to compare against (conf/analyze.yaml)."""

    errorbar: ErrorBar
    reference_experiments: tuple[str, ...]
    reference_lr: float


def settings(cfg: AnalyzeConfig) -> Settings:
    """The analysis settings of `cfg`, checked: a bad value fails in one line naming the fix."""
    checks = [
        ("errorbar", cfg.errorbar in KINDS, f"one of {', '.join(KINDS)}"),
        ("confidence", 0 < cfg.confidence < 1, "in (0, 1), e.g. 0.95"),
        ("bootstrap.resamples", cfg.bootstrap.resamples >= 1, ">= 1"),
        ("stability.reference_lr", cfg.stability.reference_lr > 0, "> 0"),
    ]
    for key, ok, must in checks:
        if not ok:
            value = attrgetter(key)(cfg)
            raise AnalysisError(f"invalid {key}={value!r}: it must be {must} (set {key}=VALUE)")
    bar = ErrorBar(cfg.errorbar, cfg.confidence, cfg.bootstrap.resamples, cfg.bootstrap.seed)
    return Settings(bar, tuple(cfg.stability.reference_experiments), cfg.stability.reference_lr)


def raw_override(overrides: Sequence[str], key: str) -> str | None:
    """The text given for `key` on the command line, as typed: Hydra's grammar reads
    `sweep_id=01234567` as a number. Quotes around it are removed; absent or null: None."""
    for override in reversed(overrides):
        name, sep, value = override.lstrip("+~").partition("=")
        if sep and name == key:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return None if value == "null" else value
    return None


@dataclass(frozen=True)
class Outcome:
    """What an analysis wrote and where it logged it."""

    study: Study
    stability: Stability | None
    files: tuple[Path, ...]
    run_id: str


def log_analysis(
    store: Store, study: Study, files: list[Path], params: dict[str, str], started_ms: int
) -> str:
    """A new run tagged kind=analysis, from `started_ms` to now, holding `files`.

    One run per analysis, so that each shows its own time and keeps what it wrote; the
    analyses of one selection share the tag `analysis_id`.
    """
    tags = {
        "kind": "analysis",
        "analysis_id": fingerprint({"selection": study.selection}),
        "analysed_runs": len(study.runs),
        "left_out_runs": len(study.left_out),
        "engine_version": study.engine_version,
        "errorbar": study.errorbar.label,
        **git_state(),
    }
    run = store.client.create_run(study.experiment_id, started_ms, run_name="analysis")
    run_id = run.info.run_id
    try:
        log_values(store, run_id, params=params, tags=tags)
        for path in files:
            store.client.log_artifact(run_id, str(path))
    except BaseException:
        store.client.set_terminated(run_id, "FAILED")
        raise
    store.client.set_terminated(run_id, "FINISHED")
    return run_id


def analyze(
    uri: str | None,
    experiment: str,
    out: Path,
    config: Settings,
    *,
    sweep_id: str | None,
    filter_string: str | None,
) -> Outcome:
    """Analyse the experiment's training runs into `out` and log the result to MLflow."""
    started_ms = now_ms()
    store = connect_existing(uri)
    study = load_study(
        store, experiment, sweep_id=sweep_id, filter_string=filter_string, errorbar=config.errorbar
    )
    stability = load_stability(store, study, config.reference_experiments, config.reference_lr)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_all(study, stability, out)
    files = [*figures, write_summary(study, out / "summary.csv"), write_runs(study, out / RUNS_CSV)]
    files.append(write_report(study, stability, figures, out / "REPORT.md"))
    params = {"sweep_id": sweep_id, "filter": filter_string, "selection": study.selection}
    params = {k: v for k, v in params.items() if v is not None}
    run_id = log_analysis(store, study, files, params, started_ms)
    log.info(
        "analysed %d runs in %d groups (%d left out) → %s; MLflow run %s",
        len(study.runs),
        len(study.groups),
        len(study.left_out),
        out / "REPORT.md",
        run_id,
    )
    return Outcome(study, stability, tuple(files), run_id)
