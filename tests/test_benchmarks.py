"""The benchmarks run and check what they claim: the reference loop computes what hw3 computes,
and hw3's pooling gives torch's bits. On a slice of the real data (skipped where it is absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import real_data_location, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root from which the benchmarks find the official files."""
    location = real_data_location(tmp_path_factory.mktemp("real"))
    if location is None:
        pytest.skip("FashionMNIST is not on this machine")
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
    assert result["ratio"] > 0 and set(result["reference"]) == set(result["hw3"])
    diff = result["max_abs_diff"]
    assert diff["train/acc"] == 0.0
    assert max(diff.values()) < 1e-4, diff  # same weights, same batches: rounding only
    assert result["memory"]["hw3"]["rss_peak_mib"] > 0


def test_pooling_benchmark_finds_the_same_bits(data_root: Path):
    result = last_json_line(
        "benchmarks/pooling.py", "--model", "bn", "--train-size", "256", "--steps", "3",
        "--rounds", "2", "--data-root", str(data_root),
    )  # fmt: skip
    assert result["bit_identical"] is True
    assert set(result["ratio"]) == {"full_pass_s", "step_ms"}
