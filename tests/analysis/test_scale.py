"""Studies of many runs: the store selects a sweep's jobs, with the filter; errors and reports
stay readable at any size (seed ranges, long tables of runs in runs.csv)."""

from __future__ import annotations

import pandas as pd
import pytest
from logged_runs import EXPERIMENT, history, log_run, log_sweep, settings

from hw3.analysis import report as report_module
from hw3.analysis import study as study_module
from hw3.analysis.findings import compute
from hw3.analysis.report import RUNS_CSV, listing, write_report, write_runs
from hw3.analysis.study import AnalysisError, Study, load_study
from hw3.tracking.store import connect_existing


def study_of(uri: str, sweep_id: str | None = None, filter_string: str | None = None) -> Study:
    """The study of EXPERIMENT's runs (of one sweep, matching a filter), min–max error bars."""
    bar = settings("range").errorbar
    return load_study(
        connect_existing(uri),
        EXPERIMENT,
        sweep_id=sweep_id,
        filter_string=filter_string,
        errorbar=bar,
    )


@pytest.mark.parametrize(
    ("seeds", "text"),
    [
        ([], ""),
        ([0], "0"),
        ([0, 1], "0, 1"),
        ([2, 0, 1], "0–2"),
        ([0, *range(1000, 1667)], "0, 1000–1666"),
        ([0, 1, 3, 4, 5, 7, 9, 10], "0, 1, 3–5, 7, 9, 10"),
        ([5, 6, 7, 8, 20, 21, 22], "5–8, 20–22"),
    ],
)
def test_seed_lists_read_as_ranges(seeds, text):
    assert listing(seeds) == text


def test_a_sweep_of_more_jobs_than_one_filter_lists_selects_every_job_and_the_filter_holds(
    store, monkeypatch: pytest.MonkeyPatch
):
    uri, client, exp = store
    monkeypatch.setattr(study_module, "IDS_PER_FILTER", 2)  # its 5 jobs take 3 filters
    sweep = "abcdef0123456789"
    values = history("plain", 0)
    jobs = [log_run(client, exp, "plain", s, values=values) for s in range(4)]
    jobs.append(log_run(client, exp, "plain", 4, values=values, params={"optimizer.lr": "0.1"}))
    log_sweep(client, exp, sweep, jobs)
    legacy = {"sweep_id": sweep}  # a run of a sweep logged before parents listed their jobs
    log_run(client, exp, "plain", 9, values=values, tags=legacy)
    log_run(client, exp, "plain", 7, values=values)  # in no sweep
    assert sorted(r.seed for r in study_of(uri, sweep[:6]).runs) == [0, 1, 2, 3, 4, 9]
    only_fast = study_of(uri, sweep[:6], "params.`optimizer.lr` = '0.1'")
    assert [r.seed for r in only_fast.runs] == [4]
    with pytest.raises(AnalysisError) as err:  # a filter that matches none of its jobs
        study_of(uri, sweep[:6], "params.`optimizer.lr` = '9'")
    assert str(err.value) == (
        f"no training runs in experiment '{EXPERIMENT}' match \"tags.kind = 'train' and "
        f"params.`optimizer.lr` = '9' and the jobs of sweep {sweep}\""
    )
    with pytest.raises(AnalysisError, match=r"^cannot select runs with .*: [^\n]*$"):
        study_of(uri, sweep[:6], "params.x == 3")
    assert sorted(r.seed for r in study_of(uri).runs) == [0, 1, 2, 3, 4, 7, 9]


def test_a_sweep_id_that_matches_none_of_many_sweeps_names_the_newest_few(store):
    uri, client, exp = store
    ids = [f"{i:x}" * 16 for i in range(7)]  # 0000…, 1111…, …, 6666…: newest last
    for sweep in ids:
        log_sweep(client, exp, sweep, [])
    with pytest.raises(AnalysisError) as err:
        study_of(uri, "abc")
    assert str(err.value) == (
        f"no sweep in experiment '{EXPERIMENT}' has an id starting with 'abc'; set sweep_id to "
        f"one of the 7 sweeps' ids, the newest {', '.join(ids[:1:-1])}, … or leave it out"
    )


def test_long_tables_of_runs_are_summed_up_and_every_run_is_in_runs_csv(
    tmp_path, store, monkeypatch: pytest.MonkeyPatch
):
    uri, client, exp = store
    monkeypatch.setattr(report_module, "MAX_TABLE_ROWS", 3)
    diverged = {"diverged": "true", "diverged_pass": "2"}
    stopped = {k: v[:1] for k, v in history("plain", 0).items()}
    for seed in range(4):
        log_run(client, exp, "plain", seed, values=stopped, tags=diverged)
    log_run(client, exp, "bn", 0)
    failed = [log_run(client, exp, "bn", s, status="FAILED", values={}) for s in (1, 2, 3)]
    older = log_run(client, exp, "bn", 0, tags={"engine_version": "old"}, start_time=1)
    study = study_of(uri)
    report = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    assert f"[{RUNS_CSV}]({RUNS_CSV})" in report.split("## Groups")[0]
    diverged_part = report.split("## Diverged")[1].split("## Left out")[0]
    assert f"4 runs diverged (each with its pass in [{RUNS_CSV}]({RUNS_CSV})" in diverged_part
    assert "| plain | 4 |" in diverged_part and "| `" not in diverged_part
    left_out = report.split("## Left out")[1]
    assert f"4 runs left out (each with why in [{RUNS_CSV}]({RUNS_CSV}), column `why`)" in left_out
    assert "| status FAILED | 3 |" in left_out
    assert "| engine version old, older than unknown | 1 |" in left_out
    assert "| `" not in left_out  # no run by run rows
    runs = pd.read_csv(write_runs(study, tmp_path / RUNS_CSV))
    assert len(runs) == 9 and runs["run"].is_unique
    assert sorted(runs.loc[~runs["used"], "run"]) == sorted([*failed, older])
    assert set(runs.loc[runs["run"].isin(failed), "why"]) == {"status FAILED"}
    assert runs.loc[runs["group"] == "plain", "diverged_pass"].tolist() == [2, 2, 2, 2]
