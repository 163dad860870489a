"""One analysis: an experiment's training runs → figures, summary.csv, REPORT.md → an MLflow run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from hw3.analysis.figures import draw_all
from hw3.analysis.report import write_report, write_summary
from hw3.analysis.study import Study, load_study
from hw3.tracking.schema import Config
from hw3.tracking.store import (
    Store,
    connect_existing,
    find_runs,
    fingerprint,
    git_state,
    log_values,
)

log = logging.getLogger("hw3")


@dataclass
class AnalyzeConfig(Config):
    """The run config plus what to analyse and where to write it (conf/analyze.yaml)."""

    out: str = MISSING
    sweep_id: str | None = MISSING
    filter: str | None = MISSING


def register() -> None:
    """Register the schema that conf/analyze.yaml puts over the run config's."""
    ConfigStore.instance().store(name="analyze_schema", node=AnalyzeConfig)


@dataclass(frozen=True)
class Outcome:
    """What an analysis wrote and where it logged it."""

    study: Study
    files: tuple[Path, ...]
    run_id: str


def log_analysis(store: Store, study: Study, files: list[Path], params: dict[str, str]) -> str:
    """The study's run tagged kind=analysis, holding `files`: one per selection, updated.

    Regenerating an analysis overwrites its artifacts in the same run rather than adding a
    run to the experiment at every call.
    """
    key = fingerprint({"selection": study.selection})
    tags = {
        "kind": "analysis",
        "analysis_id": key,
        "analysed_runs": len(study.runs),
        "left_out_runs": len(study.left_out),
        **git_state(),
    }
    earlier = find_runs(store, study.experiment_id, kind="analysis", analysis_id=key)
    if earlier:
        run_id = earlier[0].info.run_id
        store.client.update_run(run_id, status="RUNNING")
    else:
        run_id = store.client.create_run(study.experiment_id, run_name="analysis").info.run_id
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
    *,
    sweep_id: str | None = None,
    filter_string: str | None = None,
) -> Outcome:
    """Analyse the experiment's FINISHED training runs into `out` and log the result to MLflow."""
    store = connect_existing(uri)
    study = load_study(store, experiment, sweep_id=sweep_id, filter_string=filter_string)
    out.mkdir(parents=True, exist_ok=True)
    figures = draw_all(study, out)
    files = [*figures, write_summary(study, out / "summary.csv")]
    files.append(write_report(study, figures, out / "REPORT.md"))
    params = {"sweep_id": sweep_id, "filter": filter_string, "selection": study.selection}
    run_id = log_analysis(store, study, files, {k: v for k, v in params.items() if v is not None})
    log.info(
        "analysed %d runs in %d groups (%d left out) → %s; MLflow run %s",
        len(study.runs),
        len(study.groups),
        len(study.left_out),
        out / "REPORT.md",
        run_id,
    )
    return Outcome(study, tuple(files), run_id)
