"""The findings as numbers, computed once from a study of synthetic runs with known values (the
report's wording of them is tested in test_analysis.py)."""

from __future__ import annotations

import pytest
from logged_runs import EXPERIMENT, FINAL_ACC, LR, log_grid, log_run, settings
from scipy import stats

from hw3.analysis.findings import Findings, compute
from hw3.analysis.study import load_study
from hw3.tracking.store import connect_existing

MODELS = ("plain", "bn", "stride")


def findings_of(uri: str, errorbar: str = "range") -> Findings:
    """The findings of EXPERIMENT's runs."""
    bar = settings(errorbar).errorbar
    study = load_study(
        connect_existing(uri), EXPERIMENT, sweep_id=None, filter_string=None, errorbar=bar
    )
    return compute(study)


def test_each_comparable_pair_pass_by_pass_and_seed_by_seed(store):
    uri, client, exp = store
    log_grid(client, exp, MODELS)
    found = findings_of(uri)
    # L̂ (logged_runs.SMOOTHNESS, plus the seed): plain 10, bn 12, 8, 8, stride 11 per pass.
    assert [(c.a, c.b) for c in found.smoothness] == [
        ("plain", "bn"),
        ("plain", "stride"),
        ("bn", "stride"),
    ]
    plain_bn = found.smoothness[0]
    assert plain_bn.passes == (1, 2, 3)
    assert plain_bn.mean_a == pytest.approx((11.0, 11.0, 11.0))
    assert plain_bn.mean_b == pytest.approx((13.0, 9.0, 9.0))
    assert plain_bn.below == 2 and plain_bn.last_ratio == pytest.approx(9 / 11)
    order = plain_bn.seedwise
    assert (order.above, order.below, order.holds, order.pairs) == ("plain", "bn", 6, 9)
    assert order.exceptions == ((0, 1), (1, 1), (2, 1))
    assert found.smoothness[1].below == 0  # stride is above plain at every pass


def test_step_bounds_against_the_learning_rate(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"))
    plain, bn = findings_of(uri).step_bounds
    assert (plain.group, plain.lr, plain.passes, plain.passes_above) == ("plain", LR, 3, 3)
    assert plain.bound_min == pytest.approx(1 / 11) and plain.bound_max == pytest.approx(1 / 11)
    assert (plain.runs, plain.run_passes, plain.points, plain.points_above) == (3, 3, 9, 9)
    assert (plain.point_min, plain.point_max) == pytest.approx((1 / 12, 1 / 10))
    assert (bn.bound_min, bn.bound_max) == pytest.approx((1 / 13, 1 / 9))


def test_accuracy_gaps_with_welch_intervals(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "stride"))
    (gap,) = findings_of(uri).accuracy
    assert (gap.a, gap.b, gap.metric, gap.at_pass, gap.n_a, gap.n_b) == (
        "plain",
        "stride",
        "test/acc",
        3,
        3,
        3,
    )
    plain, stride = FINAL_ACC["plain"], FINAL_ACC["stride"]
    assert gap.estimate == pytest.approx(sum(plain) / 3 - sum(stride) / 3)
    want = stats.ttest_ind(plain, stride, equal_var=False).confidence_interval(0.95)
    assert (gap.interval.low, gap.interval.high) == pytest.approx((want.low, want.high))
    assert want.low < 0 < want.high and not gap.excludes_zero


def test_whole_runs_and_time_per_pass(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"))
    found = findings_of(uri)
    mean, final = found.whole_runs
    assert (mean.a, mean.b, mean.summary, final.summary) == ("plain", "bn", "mean", "final")
    # bn − plain per seed: mean over passes (12 + 8 + 8) / 3 − 10 = −2/3, final pass 8 − 10.
    assert mean.difference == pytest.approx(-2 / 3) and final.difference == pytest.approx(-2)
    assert mean.seeds == (0, 1, 2) and mean.lower == 3
    # time/train_pass_s is 1 + seed at every pass: per group mean 2, min–max 1 to 3.
    times = found.times.set_index(["phase", "model"])
    for model in ("plain", "bn"):
        row = times.loc[("time/train_pass_s", model)]
        assert (row["n"], row["mean"], row["low"], row["high"]) == (3, 2.0, 1.0, 3.0)


def test_a_single_seed_has_no_interval_and_no_landscape_without_its_metrics(store):
    uri, client, exp = store
    log_run(client, exp, "plain", 0)
    log_run(client, exp, "bn", 0)
    found = findings_of(uri, "t")
    (gap,) = found.accuracy
    assert gap.interval is None and not gap.excludes_zero
    assert found.landscape == () and found.edges == () and found.verdict is None
