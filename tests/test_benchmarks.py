"""The benchmarks run and check what they claim: the reference loop computes what hw3 computes,
and hw3's pooling gives torch's bits. On a slice of the real data (skipped where it is absent).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from support.cli import run_cli
from support.data import real_data_location, synthetic_data, without_real_data

from hw3.engine import smoothness
from hw3.engine.evaluation import full_pass
from hw3.engine.models import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root from which the benchmarks find the official files."""
    location = real_data_location(tmp_path_factory.mktemp("real"))
    if location is None:
        without_real_data("FashionMNIST is not on this machine")
    return location[0]


def last_json_line(script: str, *args: str) -> dict:
    done = run_cli(script, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_speed_reference_and_hw3_agree_round_by_round(data_root: Path):
    result = last_json_line(
        "benchmarks/speed.py", "--device", "cpu", "--model", "bn", "--train-size", "256",
        "--rounds", "2", "--data-root", str(data_root),
    )  # fmt: skip
    assert (result["train_size"], result["rounds"], len(result["round_ratios"])) == (256, 2, 2)
    seconds = result["round_pass_s"]  # s/pass of each side, round by round
    ratios = [ref / ours for ref, ours in zip(seconds["reference"], seconds["hw3"], strict=True)]
    assert result["round_ratios"] == pytest.approx(ratios, abs=0.01)
    assert result["ratio"] == pytest.approx(statistics.median(ratios), abs=0.01)
    for side in ("reference", "hw3"):
        seconds = result[side]
        assert set(seconds) == {"train_pass_s", "smoothness_s", "eval_s", "pass_s"}
        phases = seconds["train_pass_s"] + seconds["smoothness_s"] + seconds["eval_s"]
        assert seconds["pass_s"] == pytest.approx(phases, abs=0.002), side
    # Same weights, same batches: float rounding only. The losses agree to ~1e-7 (docs/speed.md); L̂
    # (about 6 here), a difference of two gradients over ‖u‖, amplifies rounding: ~5e-7 of it.
    diff = result["max_abs_diff"]
    assert diff["train/acc"] == 0.0
    for key in ("train/loss_running", "train/loss", "test/loss"):
        assert diff[key] < 1e-6, diff
    assert diff["smoothness/L"] < 2e-5, diff


def test_pooling_benchmark_finds_the_same_bits(data_root: Path):
    result = last_json_line(
        "benchmarks/pooling.py", "--model", "bn", "--train-size", "256", "--steps", "3",
        "--rounds", "2", "--data-root", str(data_root),
    )  # fmt: skip
    assert result["bit_identical"] is True
    assert set(result["ratio"]) == {"full_pass_s", "step_ms"}


def test_group_benchmark_gives_each_run_its_solo_bits(data_root: Path):
    done = run_cli(
        "benchmarks/group.py", "--device", "cpu", "--train-size", "128", "--passes", "1",
        "--seeds", "0", "--steps", "3", "--members", "2", "--data-root", str(data_root),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    sweep, step = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert sweep["runs"] == 2 and sweep["bit_identical"] is True
    diffs = [v for way in sweep["max_abs_diff"].values() for v in way.values()]
    assert set(sweep["max_abs_diff"]) == {"group", "one_group"} and diffs
    assert all(v == 0 for v in diffs), sweep["max_abs_diff"]
    assert set(step["member_steps_per_s"]) == {"sequential", "vmap"}
    assert step["max_weight_diff_vs_sequential"]["vmap"] < 1e-5


def test_landscape_benchmark_measures_what_the_engine_logs(data_root: Path, monkeypatch):
    done = run_cli(
        "benchmarks/landscape.py", "--device", "cpu", "--train-size", "200", "--chunk-size",
        "100", "--sharpness-examples", "64", "--sharpness-iters", "3", "--data-root",
        str(data_root),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    measured = [r for r in lines if "direction_1_as_K1" in r]
    assert {(r["directions"], len(r["scales"])) for r in measured} >= {(1, 1), (4, 1), (4, 5)}
    assert all(r["direction_1_as_K1"] is True for r in measured)
    for r in measured:
        passes = full_passes_of_measure(monkeypatch, r["directions"], r["scales"])
        assert r["full_gradient_passes"] == passes, r["config"]


def full_passes_of_measure(monkeypatch: pytest.MonkeyPatch, k: int, scales: list[float]) -> int:
    """The full passes that hw3's `measure` makes for `k` directions and `scales`, counted."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return full_pass(*args, **kwargs)

    data = synthetic_data(n_train=64, n_test=8)
    batches = [torch.arange(32)] * k
    with monkeypatch.context() as patch:
        patch.setattr(smoothness, "full_pass", counted)
        smoothness.measure(
            build_model("plain"), data.train.x, data.train.y, batches, 0.1, scales, 64
        )
    return len(calls)


def test_cli_benchmark_holds_each_command_to_its_reference(data_root: Path):
    done = run_cli(
        "benchmarks/cli.py", "--repeats", "1", "--train-size", "64", "--test-size", "64",
        "--data-root", str(data_root), timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]  # it fails if a relaunch trains anything
    result = json.loads(done.stdout.splitlines()[-1])
    assert "| relaunch | ≤ 1.3× + 1 s | " in done.stdout  # the table
    for clock in ("wall", "cpu"):
        figures = result[clock]
        ref = figures["references"]
        assert figures["relaunch_bound"] == pytest.approx(
            ref["bare_multirun"] + ref["store_search"], abs=0.02
        )
        bounds = {"help": ref["bare_help"], "cfg": ref["bare_help"], "analyze": 5.0}
        bounds["relaunch"] = figures["relaunch_bound"]
        for command, bound in bounds.items():
            row = figures[f"after:{command}"]
            assert row["s"] > 0
            assert row["ratio"] == pytest.approx(row["s"] / bound, rel=0.05, abs=0.05)
    assert 0 < result["first_line_s"] < 300
    assert result["peak_mib"]["bare_help"] > 0


def test_scale_copies_by_sql_are_the_clients(data_root: Path, tmp_path: Path):
    # The tiny sweep (run.py), 6 copies of it by the MLflow client and by SQL, the stores compared
    # as the client reads them, then a relaunch of two copies' seeds on the SQL one: all skip.
    done = run_cli("benchmarks/scale.py", "--check", "--cache", str(tmp_path), timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "check: the SQL copies are the client's" in done.stdout
    assert "check: relaunch of seeds [1000, 1005]: " in done.stdout


def test_figures_do_not_gain_text_with_seeds(tmp_path: Path):
    # Per-seed labels only for a few seeds: past that the paired panels name their extremes.
    result = last_json_line(
        "benchmarks/figures.py", "--seeds", "3", "400", "--out", str(tmp_path), "--only",
        "paired", "time",
    )  # fmt: skip
    few, many = result["results"]["3"], result["results"]["400"]
    for name in ("paired", "time"):  # the same titles, labels and ticks; 400 seeds named: 2,400
        assert many[name]["texts"] <= few[name]["texts"] + 10, name
    assert (tmp_path / "paired.png").stat().st_size > 10_000
