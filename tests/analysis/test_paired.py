"""Whole-run comparisons paired by seed: the per-seed numbers, the difference's error bar, the
ratio, and the seeds a bar would need, against values worked out by hand."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from logged_runs import EXPERIMENT, history, log_run
from matplotlib.figure import Figure

from hw3.analysis.figures import all_figures, draw_paired
from hw3.analysis.findings import compute
from hw3.analysis.intervals import ErrorBar
from hw3.analysis.paired import comparisons, paired, seeds_needed
from hw3.analysis.report import write_report
from hw3.analysis.study import Study, load_study
from hw3.tracking.store import connect_existing

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


# L̂ per pass of two models at seeds 0, 1, 2: bn − plain is −1, −2, −3 over the passes' means
# (mean −2, sd 1) and −2, −2, −5 at the final pass (mean −3, sd √3).
WHOLE_RUNS = {
    ("plain", 0): [10.0, 10.0, 10.0],
    ("plain", 1): [11.0, 11.0, 11.0],
    ("plain", 2): [12.0, 12.0, 12.0],
    ("bn", 0): [9.5, 9.5, 8.0],
    ("bn", 1): [9.0, 9.0, 9.0],
    ("bn", 2): [10.0, 10.0, 7.0],
}


def log_whole_runs(client, exp) -> None:
    """WHOLE_RUNS as training runs in the store."""
    for (model, seed), values in WHOLE_RUNS.items():
        log_run(client, exp, model, seed, values=history(model, seed) | {L: values})


def study_of(uri: str, kind: str) -> Study:
    """The study of EXPERIMENT's runs with error bars of `kind`."""
    store = connect_existing(uri)
    return load_study(store, EXPERIMENT, sweep_id=None, filter_string=None, errorbar=bar(kind))


def test_the_report_states_each_whole_run_comparison_in_one_sentence(tmp_path, store):
    uri, client, exp = store
    log_whole_runs(client, exp)
    study = study_of(uri, "t")
    text = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    section = text.split("## Whole runs, paired by seed")[1].split("\n## ")[0]
    sentences = [line for line in section.splitlines() if line.startswith("- ")]
    # mean: t(0.975, 2)·1/√3 = 2.484 around −2; 4 seeds would do (3.182/√4 = 1.591 < 2).
    # final: t(0.975, 2)·√3/√3 = 4.303 around −3; 4 seeds would do (3.182·1.732/√4 = 2.756 < 3).
    assert sentences == [
        "- **Whole-run L̂ (mean over passes), bn vs plain, paired by seed (seeds 0–2):** "
        "bn − plain = -2 (ratio 0.8182; bn lower at 3 of 3 seeds), 95% Student-t interval of "
        "the mean of the paired difference [-4.484, 0.4841], which includes 0; at this effect "
        "and spread it would exclude 0 from 4 seeds.",
        "- **Whole-run L̂ (final pass), bn vs plain, paired by seed (seeds 0–2):** "
        "bn − plain = -3 (ratio 0.7273; bn lower at 3 of 3 seeds), 95% Student-t interval of "
        "the mean of the paired difference [-7.303, 1.303], which includes 0; at this effect "
        "and spread it would exclude 0 from 4 seeds.",
    ]


def test_a_bar_that_does_not_narrow_names_the_seeds_a_t_interval_would_need(tmp_path, store):
    uri, client, exp = store
    log_whole_runs(client, exp)
    study = study_of(uri, "range")
    text = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    assert (
        "min–max over seeds of the paired difference [-3, -1], which excludes 0; a min–max "
        "over seeds does not narrow with more seeds; a 95% Student-t interval would exclude 0 "
        "from 4 seeds." in text
    )


def test_the_paired_figure_draws_each_seed_s_two_runs(store):
    uri, client, exp = store
    log_whole_runs(client, exp)
    study = study_of(uri, "t")
    fig = all_figures(compute(study))["paired"]
    assert [ax.get_title() for ax in fig.axes] == [
        "bn vs plain, mean over passes, n = 3\nbn − plain = -2 [-4.48, 0.484]",
        "bn vs plain, final pass, n = 3\nbn − plain = -3 [-7.3, 1.3]",
    ]
    assert "error bars: 95% Student-t interval of the mean" in fig.get_suptitle().replace("\n", " ")
    means = {"plain": [10.0, 11.0, 12.0], "bn": [9.0, 9.0, 9.0]}
    finals = {"plain": [10.0, 11.0, 12.0], "bn": [8.0, 9.0, 7.0]}
    for ax, per_seed in zip(fig.axes, (means, finals), strict=True):
        (seeds,) = [c for c in ax.collections if c.get_gid() == "seed"]
        expected = zip(per_seed["plain"], per_seed["bn"], strict=True)
        assert [list(s[:, 1]) for s in seeds.get_segments()] == [
            pytest.approx([a, b]) for a, b in expected
        ]
        assert not seeds.get_rasterized()
        labels = [t.get_text() for t in ax.texts]
        assert labels == ["seed 0", "seed 1", "seed 2"]  # few seeds: each one named
        (mean,) = [line for line in ax.lines if line.get_gid() == "mean"]
        assert list(mean.get_ydata()) == pytest.approx(
            [sum(per_seed["plain"]) / 3, sum(per_seed["bn"]) / 3]
        )


def test_variants_with_keys_of_their_own_are_compared_with_the_others(tmp_path, store):
    uri, client, exp = store
    log_whole_runs(client, exp)
    for seed in range(3):  # gn: plain's L̂ minus 1, with a key plain and bn do not have
        values = history("plain", seed) | {L: [v - 1 for v in WHOLE_RUNS[("plain", seed)]]}
        log_run(client, exp, "gn", seed, values=values, params={"model.groups": "4"})
    study = study_of(uri, "t")
    text = write_report(compute(study), [], tmp_path / "REPORT.md").read_text()
    compared = re.findall(r"\*\*Whole-run L̂ \(mean over passes\), (\S+) vs (\S+),", text)
    assert compared == [("bn", "plain"), ("gn", "plain"), ("gn", "bn")]
    assert "gn − plain = -1 (ratio 0.9091; gn lower at 3 of 3 seeds)" in text


def test_a_paired_panel_of_hundreds_of_seeds_names_the_extremes_and_rasterises():
    n = 400  # past RASTER_AT and SEED_LABELS
    rows = {("plain", seed): [10.0 + seed % 7] * 2 for seed in range(n)}
    rows |= {("bn", seed): [9.0 + seed % 5] * 2 for seed in range(n)}
    rows[("bn", 123)], rows[("bn", 321)] = [1.0, 1.0], [30.0, 30.0]  # the extremes of bn − plain
    p = paired(tidy(rows), "plain", "bn", L, "mean", bar("t"))
    ax = Figure().subplots()
    draw_paired(ax, p, {"plain": "C0", "bn": "C1"})
    assert sorted(t.get_text() for t in ax.texts) == ["seed 123 (min)", "seed 321 (max)"]
    (seeds,) = [c for c in ax.collections if c.get_gid() == "seed"]
    assert len(seeds.get_segments()) == n and seeds.get_rasterized()
