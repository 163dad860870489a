"""One analysis: an experiment's training runs → figures, summary.csv, REPORT.md → an MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from hw3.analysis.config import AnalyzeConfig
from hw3.analysis.figures import FORMATS, draw_all
from hw3.analysis.findings import Findings, compute
from hw3.analysis.intervals import KINDS, ErrorBar
from hw3.analysis.report import RUNS_CSV, write_report, write_runs, write_summary
from hw3.analysis.stability import load_stability
from hw3.analysis.study import AnalysisError, Study, load_study, search
from hw3.tracking.claim import now_ms
from hw3.tracking.provenance import fingerprint, git_state
from hw3.tracking.record import log_values
from hw3.tracking.store import Store, connect_existing

log = logging.getLogger("hw3")
PARENT = "mlflow.parentRunId"  # the tag MLflow nests a run under its parent by


@dataclass(frozen=True)
class Settings:
    """How to aggregate and what to compare against (conf/analyze.yaml)."""

    errorbar: ErrorBar
    reference_experiments: tuple[str, ...]
    reference_lr: float
    formats: tuple[str, ...]  # of the figures: png, pdf


def settings(cfg: AnalyzeConfig) -> Settings:
    """The analysis settings of `cfg`, checked: a bad value fails in one line naming the fix."""
    checks = [
        ("errorbar", cfg.errorbar in KINDS, f"one of {', '.join(KINDS)}"),
        ("confidence", 0 < cfg.confidence < 1, "in (0, 1), e.g. 0.95"),
        ("bootstrap.resamples", cfg.bootstrap.resamples >= 1, ">= 1"),
        ("stability.reference_lr", cfg.stability.reference_lr > 0, "> 0"),
        ("formats", bool(cfg.formats) and set(cfg.formats) <= set(FORMATS), "png and/or pdf"),
    ]
    for key, ok, must in checks:
        if not ok:
            value = attrgetter(key)(cfg)
            raise AnalysisError(f"invalid {key}={value!r}: it must be {must} (set {key}=VALUE)")
    bar = ErrorBar(cfg.errorbar, cfg.confidence, cfg.bootstrap.resamples, cfg.bootstrap.seed)
    references = tuple(cfg.stability.reference_experiments)
    return Settings(bar, references, cfg.stability.reference_lr, tuple(cfg.formats))


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

    findings: Findings
    files: tuple[Path, ...]
    run_id: str


def analysis_name(sweep_id: str | None, filter_string: str | None) -> str:
    """An analysis run's name: what it selected, e.g. 'analysis of sweep 20e78445'."""
    parts = [f"sweep {sweep_id}"] if sweep_id else []
    parts += [filter_string] if filter_string else []
    return f"analysis of {', '.join(parts) or 'all runs'}"


def log_analysis(
    store: Store,
    study: Study,
    files: list[Path],
    params: dict[str, str],
    started_ms: int,
    name: str,
) -> str:
    """A new run tagged kind=analysis, from `started_ms` to now, holding `files`, with the
    earlier analyses of the same selection nested under it.

    One run per analysis, so that each shows its own time and keeps what it wrote; the
    analyses of one selection share the tag `analysis_id`, and only the newest is in view at
    the top of the experiment's runs.
    """
    analysis_id = fingerprint({"selection": study.selection})
    tags = {
        "kind": "analysis",
        "analysis_id": analysis_id,
        "analysed_runs": len(study.runs),
        "left_out_runs": len(study.left_out),
        "engine_version": study.engine_version,
        "errorbar": study.errorbar.label,
        **git_state(),
    }
    run = store.client.create_run(study.experiment_id, started_ms, run_name=name)
    run_id = run.info.run_id
    try:
        log_values(store, run_id, params=params, tags=tags)
        for path in files:
            store.client.log_artifact(run_id, str(path))
    except BaseException:
        store.client.set_terminated(run_id, "FAILED")
        raise
    store.client.set_terminated(run_id, "FINISHED")
    earlier = search(
        store, study.experiment_id, f"tags.kind = 'analysis' and tags.analysis_id = '{analysis_id}'"
    )
    for r in earlier:
        if r.info.run_id != run_id and r.data.tags.get(PARENT) != run_id:
            store.client.set_tag(r.info.run_id, PARENT, run_id)
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
    findings = compute(study, stability)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_all(findings, out, config.formats)
    files = [*figures, write_summary(study, out / "summary.csv"), write_runs(study, out / RUNS_CSV)]
    files.append(write_report(findings, figures, out / "REPORT.md"))
    params = {"sweep_id": sweep_id, "filter": filter_string, "selection": study.selection}
    params = {k: v for k, v in params.items() if v is not None}
    name = analysis_name(sweep_id, filter_string)
    run_id = log_analysis(store, study, files, params, started_ms, name)
    log.info(
        "analysed %d runs in %d groups (%d left out) → %s; MLflow run %s",
        len(study.runs),
        len(study.groups),
        len(study.left_out),
        out / "REPORT.md",
        run_id,
    )
    return Outcome(findings, tuple(files), run_id)
