"""Whole-run comparisons paired by seed: the per-seed numbers, the difference's error bar, the
ratio, and the seeds a bar would need, against values worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hw3.analysis.intervals import ErrorBar
from hw3.analysis.paired import comparisons, paired, seeds_needed

L = "smoothness/L"


def bar(kind: str, confidence: float = 0.95) -> ErrorBar:
    return ErrorBar(kind, confidence, resamples=1000, seed=0)


@pytest.mark.parametrize(
    ("mean", "sd", "kind", "needed"),
    [
        # t: the fewest n with t(0.975, n−1)·sd/√n < |mean|; at n = 6, 2.571/√6 = 1.050 > 1, at
        # n = 7, 2.447/√7 = 0.925 < 1.
        (1.0, 1.0, "t", 7),
        (-1.0, 1.0, "t", 7),  # the sign does not matter
        (1.0, 0.1, "t", 2),  # 12.71·0.1/√2 = 0.899 < 1
        # se: sd/√n < |mean|, 2/√n < 1 from n = 5.
        (1.0, 2.0, "se", 5),
        # bootstrap, as its normal approximation: 1.96/√n < 1 from n = 4.
        (1.0, 1.0, "bootstrap", 4),
        # range and sd do not narrow with more seeds; no effect is never told apart.
        (1.0, 1.0, "range", None),
        (1.0, 0.5, "sd", None),
        (0.0, 1.0, "t", None),
        (1e-3, 1.0, "t", None),  # (1.96/1e-3)² ≈ 3.8 million seeds: beyond the cap
    ],
)
def test_seeds_needed_follows_each_bar_s_width(mean, sd, kind, needed):
    assert seeds_needed(mean, sd, bar(kind)) == needed


def tidy(rows: dict[tuple[str, int], list[float]]) -> pd.DataFrame:
    """(model, seed) → L̂ per pass, as a study's tidy table."""
    return pd.DataFrame(
        [
            (f"{model}-{seed}", model, seed, p, L, v)
            for (model, seed), values in rows.items()
            for p, v in enumerate(values, start=1)
        ],
        columns=["run", "model", "seed", "pass", "metric", "value"],
    )


TIDY = tidy(
    {
        ("plain", 0): [4.0, 6.0],
        ("plain", 1): [5.0, 5.0],
        ("plain", 2): [3.0, 9.0],
        ("bn", 0): [2.0, 4.0],  # mean 3 (plain 5): −2; final 4 (plain 6): −2
        ("bn", 1): [4.0, 5.0],  # mean 4.5 (plain 5): −0.5; final 5 (plain 5): 0
        ("bn", 2): [3.0, 5.0],  # mean 4 (plain 6): −2; final 5 (plain 9): −4
        ("bn", 3): [1.0, 1.0],  # no plain run of seed 3: not paired
    }
)


def test_runs_are_summed_up_and_paired_by_seed():
    whole = paired(TIDY, "plain", "bn", L, "mean", bar("range"))
    assert whole.seeds == (0, 1, 2)
    assert whole.values_a == (5.0, 5.0, 6.0) and whole.values_b == (3.0, 4.5, 4.0)
    assert whole.difference == pytest.approx(-1.5)
    assert (whole.low, whole.high) == (-2.0, -0.5)  # min–max of the paired differences
    assert whole.ratio == pytest.approx(11.5 / 16) and whole.lower == 3 and whole.separated
    assert whole.needed is None  # min–max bars do not narrow with more seeds
    assert whole.needed_t == seeds_needed(-1.5, math.sqrt(0.75), bar("t"))  # sd of −2, −.5, −2
    final = paired(TIDY, "plain", "bn", L, "final", bar("range"))
    assert final.values_a == (6.0, 5.0, 9.0) and final.values_b == (4.0, 5.0, 5.0)
    assert (final.low, final.high) == (-4.0, 0.0) and final.lower == 2 and not final.separated


def test_only_the_passes_both_runs_logged_count():
    diverged = tidy({("plain", 0): [4.0, 6.0, 8.0], ("bn", 0): [2.0, 3.0]})  # bn: 2 passes
    whole = paired(diverged, "plain", "bn", L, "mean", bar("t"))
    assert whole.values_a == (5.0,) and whole.values_b == (2.5,)
    assert math.isnan(whole.low) and whole.needed is None  # one seed: no bar, no spread
    final = paired(diverged, "plain", "bn", L, "final", bar("t"))
    assert (final.values_a, final.values_b) == ((6.0,), (3.0,))


def test_pairs_without_a_common_seed_are_left_out():
    found = comparisons(TIDY, [("plain", "bn"), ("plain", "gn")], L, bar("t"))
    assert [(p.a, p.b, p.summary) for p in found] == [
        ("plain", "bn", "mean"),
        ("plain", "bn", "final"),
    ]
    t_low, t_high = found[0].low, found[0].high
    half = 4.302652729911275 * math.sqrt(0.75) / math.sqrt(3)  # t(0.975, 2)·sd/√n
    assert (t_low, t_high) == (pytest.approx(-1.5 - half), pytest.approx(-1.5 + half))
