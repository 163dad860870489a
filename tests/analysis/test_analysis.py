"""analyze.py: synthetic runs with known values in a temporary store → summary, figures, report."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_cli
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from scipy import stats

from hw3.analysis import job as analysis_job
from hw3.analysis.job import analyze
from hw3.analysis.report import write_report, write_summary
from hw3.analysis.study import AnalysisError, Study, load_study
from hw3.tracking.store import TrackingError, connect_existing

analysis_job.register()

EXPERIMENT = "exp"
PASSES = 3
LR = 0.04
# Final-pass test accuracy per model and seed 0, 1, 2; earlier passes are 0.1 lower per pass.
FINAL_ACC = {"plain": [0.80, 0.82, 0.87], "bn": [0.84, 0.85, 0.86], "stride": [0.78, 0.79, 0.83]}
# L̂ per pass (plus the seed): bn is below plain at passes 2 and 3 only.
SMOOTHNESS = {"plain": [10.0, 10.0, 10.0], "bn": [12.0, 8.0, 8.0], "stride": [11.0, 11.0, 11.0]}
PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF-"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with MLflow's schema, made once: creating the schema takes seconds."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, empty_db: Path) -> tuple[str, MlflowClient, str]:
    """An empty SQLite store with experiment EXPERIMENT: (uri, client, experiment id)."""
    uri = f"sqlite:///{shutil.copy(empty_db, tmp_path / 'mlflow.db')}"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, (tmp_path / "artifacts").as_uri())
    return uri, client, exp


def history(model: str, seed: int, *, smoothness: bool = True) -> dict[str, list[float]]:
    """Per-pass values of one synthetic run, all known in closed form."""
    acc = [FINAL_ACC[model][seed] - 0.1 * (PASSES - p) for p in range(1, PASSES + 1)]
    out = {
        "train/loss": [1.0 - a for a in acc],
        "test/loss": [1.2 - a for a in acc],
        "train/acc": [a + 0.05 for a in acc],
        "test/acc": acc,
        "time/train_pass_s": [1.0 + seed] * PASSES,
    }
    if smoothness:
        out["smoothness/L"] = [v + seed for v in SMOOTHNESS[model]]
        out["smoothness/lr_max"] = [1 / (v + seed) for v in SMOOTHNESS[model]]
    return out


def log_run(
    client: MlflowClient,
    exp: str,
    model: str,
    seed: int,
    *,
    status: str = "FINISHED",
    values: dict[str, list[float]] | None = None,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    start_time: int | None = None,
) -> str:
    """A training run as run.py logs it: tags, flattened params, one point per pass."""
    run_id = client.create_run(exp, start_time, run_name=f"{model}-seed{seed}").info.run_id
    values = history(model, seed) if values is None else values
    base = {"model.name": model, "seed": str(seed), "optimizer.lr": str(LR), "trainer.epochs": "3"}
    all_tags = {"kind": "train", "model": model, "seed": str(seed), "fingerprint": f"{model}{seed}"}
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, v, 1000 * p, p) for k, vs in values.items() for p, v in enumerate(vs, 1)
        ],
        params=[Param(k, v) for k, v in (base | (params or {})).items()],
        tags=[RunTag(k, v) for k, v in (all_tags | (tags or {})).items()],
    )
    client.set_terminated(run_id, status)
    return run_id


def log_grid(client: MlflowClient, exp: str, models: tuple[str, ...], n_seeds: int = 3) -> None:
    """FINISHED runs of `models` × seeds 0..n_seeds-1."""
    for model in models:
        for seed in range(n_seeds):
            log_run(client, exp, model, seed)


def report_only(uri: str, out: Path) -> Study:
    """The analysis without figures or an MLflow run: summary.csv and REPORT.md in `out`."""
    study = load_study(connect_existing(uri), EXPERIMENT, sweep_id=None, filter_string=None)
    out.mkdir()
    write_summary(study, out / "summary.csv")
    write_report(study, [], out / "REPORT.md")
    return study


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
    assert raw[0] == "model,pass,metric,mean,std,n,ci95"
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(summary) == 2 * PASSES * 7  # models × passes × metrics
    for model in ("plain", "bn"):
        row = summary[
            (summary["model"] == model) & (summary["pass"] == 3) & (summary["metric"] == "test/acc")
        ].iloc[0]
        mean, std, ci = mean_std_ci(FINAL_ACC[model])
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(mean, abs=1e-12)
        assert row["std"] == pytest.approx(std, abs=1e-12)
        assert row["ci95"] == pytest.approx(ci, abs=1e-12)
    # Pass 1 of L̂ for bn: seeds add 0, 1, 2 to 12.
    row = summary[
        (summary["model"] == "bn") & (summary["pass"] == 1) & (summary["metric"] == "smoothness/L")
    ].iloc[0]
    assert (row["mean"], row["std"]) == pytest.approx((13.0, 1.0))
    assert row["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert list(summary["model"].unique()) == ["plain", "bn"]


def test_figures_are_png_and_pdf(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "stride"), n_seeds=2)
    outcome = analyze(uri, EXPERIMENT, tmp_path / "out")
    for name in ("smoothness", "curves", "time"):
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
            want = f"{row['mean']:.4g} ± {row['std']:.4g} ({row['n']})"
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
    assert f"η = {LR:.4g}" in report
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
    assert set(bn["std"]) == {""} and set(bn["ci95"]) == {""}
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
    outcome = analyze(uri, EXPERIMENT, tmp_path / "out")
    names = {p.name for p in outcome.files}
    assert "curves.png" in names and "time.png" in names
    assert not any(n.startswith("smoothness") for n in names)
    assert "L̂" not in (tmp_path / "out" / "REPORT.md").read_text().split("## Figures")[0]


def test_sweep_id_and_filter_select_runs(tmp_path, store):
    uri, client, exp = store
    for seed in range(2):
        log_run(client, exp, "plain", seed, tags={"sweep_id": "abc123"})
        log_run(client, exp, "bn", seed, tags={"sweep_id": "def456"})
    s = connect_existing(uri)
    assert load_study(s, EXPERIMENT, sweep_id="abc", filter_string=None).groups == ("plain",)
    picked = load_study(s, EXPERIMENT, sweep_id=None, filter_string="params.`model.name` = 'bn'")
    assert picked.groups == ("bn",)
    with pytest.raises(AnalysisError, match="no training runs"):
        load_study(s, EXPERIMENT, sweep_id="zzz", filter_string=None)
    with pytest.raises(AnalysisError, match="cannot select runs"):
        load_study(s, EXPERIMENT, sweep_id=None, filter_string="params.x == 3")


def test_nothing_to_analyse_fails_clearly(tmp_path, store):
    uri, client, exp = store
    with pytest.raises(AnalysisError, match="no training runs in experiment 'exp'"):
        analyze(uri, EXPERIMENT, tmp_path / "out")
    with pytest.raises(AnalysisError, match="no experiment 'other'"):
        analyze(uri, "other", tmp_path / "out")
    log_run(client, exp, "plain", 0, status="FAILED")
    with pytest.raises(AnalysisError, match="has FINISHED"):
        analyze(uri, EXPERIMENT, tmp_path / "out")
    missing = tmp_path / "none" / "mlflow.db"
    with pytest.raises(TrackingError, match="no tracking store"):
        analyze(f"sqlite:///{missing}", EXPERIMENT, tmp_path / "out")
    assert not missing.parent.exists()  # reading never creates a store


def test_the_analysis_run_is_logged_and_ignored_by_the_next_analysis(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "stride"), n_seeds=2)
    first = analyze(uri, EXPERIMENT, tmp_path / "a")
    run = client.get_run(first.run_id)
    assert run.data.tags["kind"] == "analysis"
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(first.run_id)}
    assert logged == {p.name for p in first.files}
    assert {"REPORT.md", "summary.csv", "smoothness.png", "time.pdf"} <= logged
    second = analyze(uri, EXPERIMENT, tmp_path / "b")
    assert [r.run_id for r in second.study.runs] == [r.run_id for r in first.study.runs]
    assert (tmp_path / "a" / "summary.csv").read_text() == (
        tmp_path / "b" / "summary.csv"
    ).read_text()
    assert second.run_id == first.run_id  # regenerating updates the selection's analysis run
    assert len(client.search_runs([exp], "tags.kind = 'analysis'")) == 1
    other = analyze(uri, EXPERIMENT, tmp_path / "c", filter_string="tags.model = 'plain'")
    assert other.run_id != first.run_id


def test_analyze_presets_name_their_experiment(compose_config):
    cfg = compose_config("experiment=batchnorm", config_name="analyze")
    assert cfg.tracking.experiment == "hw3-batchnorm"
    assert cfg.out.endswith("reports/hw3-batchnorm")
    assert cfg.sweep_id is None and cfg.filter is None


@pytest.mark.slow  # two interpreter starts that import torch, MLflow and matplotlib
def test_cli_end_to_end(tmp_path, store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"), n_seeds=2)
    hydra_dir = f"hydra.run.dir={tmp_path / 'hydra'}"
    ok = run_cli(
        "analyze.py",
        f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}",
        f"out={tmp_path / 'out'}",
        hydra_dir,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "REPORT.md").is_file()
    assert (tmp_path / "out" / "curves.pdf").read_bytes().startswith(PDF)
    none = run_cli(
        "analyze.py",
        f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}",
        "sweep_id=nosuchsweep",
        f"out={tmp_path / 'none'}",
        hydra_dir,
    )
    assert none.returncode == 1
    message = [
        line for line in none.stderr.splitlines() if line.startswith("error: no training runs")
    ]
    assert len(message) == 1 and "nosuchsweep" in message[0]
    assert "Traceback" not in none.stderr
