"""Which runs an analysis uses: a sweep's jobs, one engine version, diverged runs as results."""

from __future__ import annotations

import pandas as pd
import pytest
from logged_runs import EXPERIMENT, PASSES, history, log_run, log_sweep, settings

from hw3.analysis.figures import legend_label
from hw3.analysis.findings import compute
from hw3.analysis.report import write_report, write_summary
from hw3.analysis.study import AnalysisError, Study, load_study
from hw3.tracking.store import connect_existing

FIRST, SECOND = "abcd0000aaaaaaaa", "abcd1111bbbbbbbb"


def study_of(uri: str, sweep_id: str | None = None) -> Study:
    """The study of EXPERIMENT's runs (of one sweep), min–max error bars."""
    bar = settings("range").errorbar
    store = connect_existing(uri)
    return load_study(store, EXPERIMENT, sweep_id=sweep_id, filter_string=None, errorbar=bar)


def test_a_sweep_selects_every_job_it_asked_for_run_or_skipped(store):
    uri, client, exp = store
    # `seed=0,1` ran two jobs; `seed=0,1,2` then skipped those two and ran seed 2.
    first = [log_run(client, exp, "plain", s, tags={"sweep_id": FIRST}) for s in (0, 1)]
    log_sweep(client, exp, FIRST, first)
    third = log_run(client, exp, "plain", 2, tags={"sweep_id": SECOND})
    log_sweep(client, exp, SECOND, [*first, third])
    log_run(client, exp, "bn", 0)  # in no sweep
    second = study_of(uri, SECOND[:8])
    assert [r.seed for r in second.runs] == [0, 1, 2]
    assert second.selection == f"tags.kind = 'train' and the jobs of sweep {SECOND}"
    assert [r.seed for r in study_of(uri, FIRST).runs] == [0, 1]
    both = study_of(uri, "abcd")  # a prefix of both ids: the union of their jobs
    assert [r.seed for r in both.runs] == [0, 1, 2]
    assert both.selection.endswith(f"the jobs of sweep {FIRST}, {SECOND}")
    assert len(study_of(uri).runs) == 4


def test_a_sweep_logged_before_parents_listed_their_jobs_selects_its_tagged_runs(store):
    uri, client, exp = store
    legacy = "0123456789abcdef"
    for seed in (0, 1):
        log_run(client, exp, "bn", seed, tags={"sweep_id": legacy})
    log_run(client, exp, "bn", 2, tags={"sweep_id": FIRST})
    log_sweep(client, exp, legacy, [])  # a parent run without job.* tags
    assert [r.seed for r in study_of(uri, "0123").runs] == [0, 1]


def test_a_sweep_id_that_matches_no_sweep_fails_naming_the_fix(store):
    uri, client, exp = store
    log_sweep(client, exp, FIRST, [log_run(client, exp, "plain", 0, tags={"sweep_id": FIRST})])
    with pytest.raises(AnalysisError) as err:
        study_of(uri, "abcd1")
    assert str(err.value) == (
        f"no sweep in experiment '{EXPERIMENT}' has an id starting with 'abcd1'; set sweep_id "
        f"to one of {FIRST} or leave it out"
    )
    with pytest.raises(AnalysisError, match="sweep_id='sweep-abcd' is not a sweep id"):
        study_of(uri, "sweep-abcd")


def test_only_the_newest_engine_version_is_analysed(tmp_path, store):
    uri, client, exp = store
    legacy = log_run(client, exp, "plain", 0, start_time=1_000)  # before the tag existed
    older = [
        log_run(client, exp, "plain", s, tags={"engine_version": "v1"}, start_time=2_000 + s)
        for s in (0, 1)
    ]
    low = {"test/acc": [0.5] * PASSES}
    for s in (0, 1, 2):
        tags = {"engine_version": "v2"}
        log_run(client, exp, "plain", s, values=low, tags=tags, start_time=3_000 + s)
    study = study_of(uri)
    assert study.engine_version == "v2"
    assert [r.seed for r in study.runs] == [0, 1, 2]
    assert {r.run_id: why for r, why in study.left_out} == {
        legacy: "engine version unknown, older than v2",
        older[0]: "engine version v1, older than v2",
        older[1]: "engine version v1, older than v2",
    }
    assert set(study.summary["mean"]) == {0.5}  # nothing of v1 averaged in
    report = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    assert "- Engine version: `v2`, that of the most recently started selected run" in report
    assert "(3 runs left out for that)" in report
    assert f"| `{older[0]}` | plain-seed0 | plain | 0 | engine version v1, older than v2 |" in (
        report
    )


def test_diverged_runs_are_results_counted_and_listed(tmp_path, store):
    uri, client, exp = store
    for seed in (0, 1):
        log_run(client, exp, "plain", seed)
    # on_divergence=stop: FINISHED, metrics of passes 1..k-1 only.
    stopped = log_run(
        client,
        exp,
        "plain",
        2,
        values={k: v[:2] for k, v in history("plain", 2).items()},
        tags={"diverged": "true", "diverged_pass": "3"},
    )
    # on_divergence=fail: FAILED at pass 1, no metrics.
    log_run(client, exp, "bn", 0)
    failed = log_run(
        client,
        exp,
        "bn",
        1,
        status="FAILED",
        values={},
        tags={"diverged": "true", "diverged_pass": "1", "error": "diverged at pass 1"},
    )
    study = study_of(uri)
    assert {r.run_id for r in study.runs} >= {stopped, failed}
    assert study.left_out == ()
    summary = pd.read_csv(write_summary(study, tmp_path / "summary.csv"))
    plain_loss = summary[(summary["model"] == "plain") & (summary["metric"] == "train/loss")]
    assert plain_loss["n"].tolist() == [3, 3, 2]  # seed 2 stopped before pass 3
    assert legend_label(study, "plain") == "plain (n=3 seeds, 1 diverged)"
    assert legend_label(study, "bn") == "bn (n=2 seeds, 1 diverged)"
    report = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    assert "- **plain**: n = 3 seeds (0–2), 1 diverged" in report
    diverged = report.split("## Diverged")[1].split("## Left out")[0]
    assert f"| `{stopped}` | plain-seed2 | plain | 2 | 3 | FINISHED |" in diverged
    assert f"| `{failed}` | bn-seed1 | bn | 1 | 1 | FAILED |" in diverged
    assert "None: every selected run is used." in report
