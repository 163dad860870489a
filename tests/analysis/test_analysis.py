"""analyze.py: synthetic runs with known values in a temporary store → summary, figures, report."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from logged_runs import (
    EXPERIMENT,
    FINAL_ACC,
    LR,
    PASSES,
    history,
    log_grid,
    log_run,
    log_sweep,
    settings,
)
from omegaconf import OmegaConf
from scipy import stats
from support.cli import run_cli

from hw3.analysis import config as analysis_config
from hw3.analysis import job as analysis_job
from hw3.analysis.findings import compute
from hw3.analysis.intervals import ErrorBar
from hw3.analysis.job import Settings, analyze
from hw3.analysis.report import write_report, write_summary
from hw3.analysis.study import AnalysisError, Study, load_study
from hw3.tracking.claim import now_ms
from hw3.tracking.store import TrackingError, connect_existing

analysis_config.register()

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF-"


def report_only(uri: str, out: Path, errorbar: str = "t") -> Study:
    """The analysis without figures or an MLflow run: summary.csv and REPORT.md in `out`."""
    study = load_study(
        connect_existing(uri),
        EXPERIMENT,
        sweep_id=None,
        filter_string=None,
        errorbar=settings(errorbar).errorbar,
    )
    out.mkdir()
    write_summary(study, out / "summary.csv")
    write_report(compute(study), [], out / "REPORT.md")
    return study


def run_analysis(uri: str, out: Path, **selection: str | None) -> analysis_job.Outcome:
    """The whole analysis with min–max error bars (files and MLflow run)."""
    selection = {"sweep_id": None, "filter_string": None} | selection
    return analyze(uri, EXPERIMENT, out, settings("range"), **selection)


def mean_std_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and 95% t half-width, from their definitions."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, std, stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)


def table_cell(report: str, metric: str, column: int) -> str:
    """A cell of the report's final-pass table (column 0 = first group)."""
    row = next(line for line in report.splitlines() if line.startswith(f"| `{metric}` |"))
    return row.strip("|").split("|")[column + 1].strip()


def test_summary_matches_means_stds_and_t_intervals(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"))
    report_only(uri, tmp_path / "out")
    raw = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert raw[0] == "model,pass,metric,n,mean,std,min,max,errorbar,low,high"
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 2 * PASSES * 7  # models × passes × metrics
    assert set(summary["errorbar"]) == {"95% Student-t interval of the mean"}
    for model in ("plain", "bn"):
        row = summary[
            (summary["model"] == model) & (summary["pass"] == 3) & (summary["metric"] == "test/acc")
        ].iloc[0]
        mean, std, ci = mean_std_ci(FINAL_ACC[model])
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(mean, abs=1e-12)
        assert row["std"] == pytest.approx(std, abs=1e-12)
        assert (row["low"], row["high"]) == pytest.approx((mean - ci, mean + ci), abs=1e-12)
        assert (row["min"], row["max"]) == (min(FINAL_ACC[model]), max(FINAL_ACC[model]))
    # Pass 1 of L̂ for bn: seeds add 0, 1, 2 to 12.
    row = summary[
        (summary["model"] == "bn") & (summary["pass"] == 1) & (summary["metric"] == "smoothness/L")
    ].iloc[0]
    assert (row["mean"], row["std"]) == pytest.approx((13.0, 1.0))
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert (row["low"], row["high"]) == pytest.approx((13 - half, 13 + half))
    assert list(summary["model"].unique()) == ["plain", "bn"]


def test_figures_are_png_and_pdf_on_request(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "stride"), n_seeds=2)
    outcome = run_analysis(uri, tmp_path / "out")
    for name in ("smoothness", "curves", "time", "paired"):
        assert (tmp_path / "out" / f"{name}.png").read_bytes().startswith(PNG)
        assert (tmp_path / "out" / f"{name}.pdf").read_bytes().startswith(PDF)
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 10_000
    assert {p.name for p in outcome.files} >= {"REPORT.md", "summary.csv", "smoothness.png"}


def test_report_numbers_match_the_summary_and_welch_interval(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn", "stride"))
    report_only(uri, tmp_path / "out")
    report = (tmp_path / "out" / "REPORT.md").read_text()
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    final = summary[summary["pass"] == PASSES]
    for column, model in enumerate(("plain", "bn", "stride")):
        for metric in ("train/loss", "test/acc", "smoothness/L", "time/train_pass_s"):
            row = final[(final["model"] == model) & (final["metric"] == metric)].iloc[0]
            want = f"{row['mean']:.4g} [{row['low']:.4g}, {row['high']:.4g}] ({row['n']})"
            assert table_cell(report, metric, column) == want
    assert "the mean L̂ of bn is below that of plain at 2 of 3 passes" in report
    # Welch: plain − stride at the final pass, from the definition.
    a, b = FINAL_ACC["plain"], FINAL_ACC["stride"]
    (ma, sa, _), (mb, sb, _) = mean_std_ci(a), mean_std_ci(b)
    va, vb = sa**2 / len(a), sb**2 / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    line = next(x for x in report.splitlines() if "`test/acc` at pass 3, plain − stride" in x)
    assert f":** {ma - mb:+.4g}, 95% Welch t interval" in line
    assert f"[{ma - mb - half:.4g}, {ma - mb + half:.4g}]" in line
    assert f"df = {df:.4g}" in line
    # 1/L̂ of plain: 1/(10 + seed) over seeds 0-2, against η.
    assert f"1/L̂ ranges from {1 / 12:.4g} to {1 / 10:.4g} over 3 runs × 3 passes" in report
    # 1/(mean L̂) of plain: 1/11 at every pass, above η = 0.04.
    assert f"1/(mean L̂ over seeds) is above the learning rate η = {LR:.4g}" in report
    assert f"at 3 of 3 passes, from {1 / 11:.4g} to {1 / 11:.4g}" in report
    assert table_cell(report, "smoothness/L", 0).startswith("11 [")
    assert "| 1/(mean L̂) | 0.09091 [" in report
    assert "single seed" not in report


def test_failed_and_unfinished_runs_are_left_out_and_listed(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain",))
    outlier = {k: [100.0] * PASSES for k in history("plain", 0)}
    failed = log_run(
        client, exp, "plain", 7, status="FAILED", values=outlier, tags={"error": "diverged"}
    )
    running = log_run(client, exp, "plain", 8, status="RUNNING", values=outlier)
    study = report_only(uri, tmp_path / "out")
    assert {r.seed for r in study.runs} == {0, 1, 2}
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(summary["n"]) == {3}
    assert summary["mean"].max() < 100
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert f"| `{failed}` | plain-seed7 | plain | 7 | status FAILED | diverged |" in report
    assert f"| `{running}` | plain-seed8 | plain | 8 | status RUNNING |" in report


def test_a_rerun_of_the_same_seed_supersedes_the_older_run(tmp_path, store):
    uri, client, exp = store
    old = log_run(client, exp, "plain", 0, values={"test/acc": [0.1] * PASSES}, start_time=1)
    log_grid(client, exp, ("plain",), n_seeds=2)
    study = report_only(uri, tmp_path / "out")
    assert [r.seed for r in study.runs] == [0, 1]
    assert [r.run_id for r, _ in study.left_out] == [old]
    assert "superseded by newer run" in (tmp_path / "out" / "REPORT.md").read_text()


def test_one_seed_has_no_error_bars_and_the_report_says_so(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain",), n_seeds=3)
    log_grid(client, exp, ("bn",), n_seeds=1)
    report_only(uri, tmp_path / "out")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv", keep_default_na=False)
    bn = summary[summary["model"] == "bn"]
    assert set(bn["n"]) == {1}
    assert set(bn["std"]) == {""} and set(bn["low"]) == {""} and set(bn["high"]) == {""}
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "**bn**: a single seed, so no error bars" in report
    assert table_cell(report, "test/acc", 1) == f"{FINAL_ACC['bn'][0]:.4g} (n=1)"
    assert "(no interval: a group has a single seed)" in report


def test_mixed_configurations_become_separate_groups(tmp_path, store):
    uri, client, exp = store
    for seed in range(2):
        log_run(client, exp, "plain", seed, params={"optimizer.lr": "0.04"})
        log_run(client, exp, "plain", seed, params={"optimizer.lr": "0.1"})
        # Where a run lived or which device it used never splits a group.
        log_run(client, exp, "bn", seed, params={"data.root": f"/d{seed}", "trainer.device": "cpu"})
    study = report_only(uri, tmp_path / "out")
    assert study.groups == ("plain (optimizer.lr=0.04)", "plain (optimizer.lr=0.1)", "bn")
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(summary["n"]) == {2}
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "never averaged together): `optimizer.lr`" in report


def test_runs_without_smoothness_skip_its_figure(tmp_path, store):
    uri, client, exp = store
    for model in ("plain", "stride"):
        for seed in range(2):
            log_run(client, exp, model, seed, values=history(model, seed, smoothness=False))
    outcome = run_analysis(uri, tmp_path / "out")
    names = {p.name for p in outcome.files}
    assert "curves.png" in names and "time.png" in names
    assert not any(n.startswith("smoothness") for n in names)
    assert "L̂" not in (tmp_path / "out" / "REPORT.md").read_text().split("## Figures")[0]


def test_a_filter_selects_runs(tmp_path, store):
    uri, client, exp = store
    for seed in range(2):
        log_run(client, exp, "plain", seed)
        log_run(client, exp, "bn", seed)
    s = connect_existing(uri)
    bar = settings("range").errorbar
    picked = load_study(
        s, EXPERIMENT, sweep_id=None, filter_string="params.`model.name` = 'bn'", errorbar=bar
    )
    assert picked.groups == ("bn",)
    with pytest.raises(AnalysisError, match="cannot select runs"):
        load_study(s, EXPERIMENT, sweep_id=None, filter_string="params.x == 3", errorbar=bar)


def test_nothing_to_analyse_fails_clearly(tmp_path, store):
    uri, client, exp = store
    with pytest.raises(AnalysisError, match="no training runs in experiment 'exp'"):
        run_analysis(uri, tmp_path / "out")
    with pytest.raises(AnalysisError, match="no experiment 'other'"):
        analyze(uri, "other", tmp_path, settings("range"), sweep_id=None, filter_string=None)
    log_run(client, exp, "plain", 0, status="FAILED")
    with pytest.raises(AnalysisError, match="has FINISHED"):
        run_analysis(uri, tmp_path / "out")
    missing = tmp_path / "none" / "mlflow.db"
    with pytest.raises(TrackingError, match="no tracking store"):
        run_analysis(f"sqlite:///{missing}", tmp_path / "out")
    assert not missing.parent.exists()  # reading never creates a store


@pytest.mark.slow
def test_each_analysis_is_a_run_of_its_own_time_ignored_by_the_next_analysis(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "stride"), n_seeds=2)
    before = now_ms()
    first = run_analysis(uri, tmp_path / "a")
    run = client.get_run(first.run_id)
    assert run.data.tags["kind"] == "analysis"
    assert run.info.status == "FINISHED"
    assert before <= run.info.start_time <= run.info.end_time <= now_ms()
    logged = {a.path for a in client.list_artifacts(first.run_id)}
    assert logged == {p.name for p in first.files}
    assert {"REPORT.md", "summary.csv", "runs.csv", "smoothness.png", "time.pdf"} <= logged
    second = run_analysis(uri, tmp_path / "b")
    assert [r.run_id for r in second.findings.study.runs] == [
        r.run_id for r in first.findings.study.runs
    ]
    assert (tmp_path / "a" / "summary.csv").read_text() == (
        tmp_path / "b" / "summary.csv"
    ).read_text()
    # Regenerating is a new run that starts after the first ended: each shows its own time.
    again = client.get_run(second.run_id)
    assert second.run_id != first.run_id
    assert client.get_run(first.run_id).info.end_time == run.info.end_time
    assert run.info.end_time <= again.info.start_time <= again.info.end_time
    assert again.data.tags["analysis_id"] == run.data.tags["analysis_id"]  # the same selection
    third = analyze(
        uri, EXPERIMENT, tmp_path / "d", settings("t"), sweep_id=None, filter_string=None
    )
    assert client.get_run(first.run_id).data.tags["errorbar"] == "min–max over seeds"
    assert (
        client.get_run(third.run_id).data.tags["errorbar"] == "95% Student-t interval of the mean"
    )
    assert len(client.search_runs([exp], "tags.kind = 'analysis'")) == 3
    other = run_analysis(uri, tmp_path / "c", filter_string="tags.model = 'plain'")
    assert client.get_run(other.run_id).data.tags["analysis_id"] != run.data.tags["analysis_id"]


def test_only_the_newest_analysis_of_a_selection_is_in_view(tmp_path, store):
    uri, client, exp = store
    jobs = [log_run(client, exp, "plain", seed, tags={"sweep_id": "abc123"}) for seed in range(2)]
    log_sweep(client, exp, "abc123", jobs)
    everything = [run_analysis(uri, tmp_path / f"all{i}").run_id for i in range(3)]
    sweep = run_analysis(uri, tmp_path / "sweep", sweep_id="abc1").run_id
    picked = run_analysis(uri, tmp_path / "f", filter_string="tags.model = 'plain'").run_id

    def parent(run_id: str) -> str | None:
        return client.get_run(run_id).data.tags.get("mlflow.parentRunId")

    # The newest of each selection is at the top; the earlier ones are nested under it.
    assert [parent(r) for r in everything] == [everything[2], everything[2], None]
    assert parent(sweep) is None and parent(picked) is None
    names = {r: client.get_run(r).info.run_name for r in (everything[2], sweep, picked)}
    assert names == {
        everything[2]: "analysis of all runs",
        sweep: "analysis of sweep abc1",
        picked: "analysis of tags.model = 'plain'",
    }


def test_analyze_presets_name_their_experiment(compose_config):
    cfg = compose_config("experiment=batchnorm", config_name="analyze")
    assert cfg.tracking.experiment == "hw3-batchnorm"
    assert cfg.out.endswith("reports/hw3-batchnorm")
    assert cfg.sweep_id is None and cfg.filter is None
    assert cfg.errorbar == "range" and analysis_job.settings(OmegaConf.to_object(cfg)) == Settings(
        ErrorBar("range", 0.95, 10_000, 0),
        ("hw3-batchnorm", "hw3-stride", "hw3-landscape"),
        0.04,
        ("png",),
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("errorbar=ci", "invalid errorbar='ci': it must be one of range, sd, se, t, bootstrap"),
        ("confidence=95", "invalid confidence=95.0: it must be in (0, 1)"),
        ("bootstrap.resamples=0", "invalid bootstrap.resamples=0: it must be >= 1"),
        ("stability.reference_lr=0", "invalid stability.reference_lr=0.0: it must be > 0"),
        ("formats=[svg]", "invalid formats=['svg']: it must be png and/or pdf"),
        ("formats=[]", "invalid formats=[]: it must be png and/or pdf"),
    ],
)
def test_bad_analysis_settings_fail_in_one_line(compose_config, override, message):
    cfg = OmegaConf.to_object(compose_config(override, config_name="analyze"))
    with pytest.raises(AnalysisError) as err:
        analysis_job.settings(cfg)
    assert str(err.value).startswith(message)
    assert str(err.value).endswith(f"(set {override.split('=')[0]}=VALUE)")


@pytest.mark.parametrize(
    ("overrides", "raw"),
    [
        (["sweep_id=01234567"], "01234567"),
        (["x=1", "sweep_id=20e78445"], "20e78445"),
        (["+sweep_id='00ff'"], "00ff"),
        (["sweep_id=null"], None),
        (["sweep_ids=1"], None),
    ],
)
def test_raw_override_keeps_what_was_typed(overrides, raw):
    assert analysis_job.raw_override(overrides, "sweep_id") == raw


@pytest.mark.slow  # three interpreter starts that import torch, MLflow and matplotlib
def test_cli_takes_sweep_ids_as_typed(tmp_path, store):
    # Hydra's grammar reads 01234567 as an int and 20e78445 as a float: both must still select.
    uri, client, exp = store
    sweeps = {"plain": "0123456789abcdef", "bn": "20e7844500000000"}
    for model, sweep in sweeps.items():
        jobs = [log_run(client, exp, model, seed, tags={"sweep_id": sweep}) for seed in range(2)]
        log_sweep(client, exp, sweep, jobs)
    common = [f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"]
    common.append(f"hydra.run.dir={tmp_path / 'hydra'}")
    for model, prefix in (("plain", "01234567"), ("bn", "20e78445")):
        out = tmp_path / model
        ok = run_cli("analyze.py", *common, f"sweep_id={prefix}", f"out={out}")
        assert ok.returncode == 0, ok.stderr
        report = (out / "REPORT.md").read_text()
        assert f"and the jobs of sweep {sweeps[model]}" in report
        assert f"- **{model}**: n = 2 seeds (0, 1)" in report
        other = ({"plain", "bn"} - {model}).pop()
        assert f"- **{other}**" not in report
        assert (out / "curves.png").read_bytes().startswith(PNG)
        assert not (out / "curves.pdf").exists()  # PDFs only on request (formats=)
        assert "[curves.pdf]" not in report
    pdf = run_cli(
        "analyze.py", *common, "sweep_id=0123", f"out={tmp_path / 'pdf'}", "formats=[png,pdf]"
    )
    assert pdf.returncode == 0, pdf.stderr
    assert (tmp_path / "pdf" / "curves.pdf").read_bytes().startswith(PDF)
    assert "[curves.pdf](curves.pdf)" in (tmp_path / "pdf" / "REPORT.md").read_text()
    none = run_cli("analyze.py", *common, "sweep_id=ffff", f"out={tmp_path / 'none'}")
    assert none.returncode == 1
    lines = [line for line in none.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [
        f"error: no sweep in experiment '{EXPERIMENT}' has an id starting with 'ffff'; set "
        f"sweep_id to one of {sweeps['plain']}, {sweeps['bn']} or leave it out"
    ]
    assert "Traceback" not in none.stderr
