"""errorbar=: each kind's bounds from its definition, in summary.csv, the report and figures."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from logged_runs import EXPERIMENT, log_grid, log_run, settings
from matplotlib.container import ErrorbarContainer
from scipy import stats

from hw3.analysis.figures import CUT_NOTE, all_figures
from hw3.analysis.findings import compute
from hw3.analysis.intervals import ErrorBar, bounds, welch
from hw3.analysis.report import write_summary
from hw3.analysis.study import load_study
from hw3.tracking.store import connect_existing

VALUES = [1.0, 2.0, 4.0, 9.0]  # one metric's value in each of four seeds
MEAN, SD = statistics.mean(VALUES), statistics.stdev(VALUES)
T3 = 3.182446305284263  # Student-t 97.5% quantile with 3 degrees of freedom


def study_with(uri: str, errorbar: str, **bootstrap: int):
    """The study of EXPERIMENT with error bars of `errorbar`."""
    bar = settings(errorbar, **bootstrap).errorbar
    store = connect_existing(uri)
    return load_study(store, EXPERIMENT, sweep_id=None, filter_string=None, errorbar=bar)


@pytest.mark.parametrize(
    ("kind", "low", "high", "label"),
    [
        ("range", 1.0, 9.0, "min–max over seeds"),
        ("sd", MEAN - SD, MEAN + SD, "mean ± 1 sample standard deviation"),
        ("se", MEAN - SD / 2, MEAN + SD / 2, "mean ± 1 standard error"),
        ("t", MEAN - T3 * SD / 2, MEAN + T3 * SD / 2, "95% Student-t interval of the mean"),
    ],
)
def test_each_kind_of_error_bar_follows_its_definition(tmp_path, store, kind, low, high, label):
    uri, client, exp = store
    for seed, value in enumerate(VALUES):
        log_run(client, exp, "plain", seed, values={"test/acc": [value]})
    summary = pd.read_csv(write_summary(study_with(uri, kind), tmp_path / "summary.csv"))
    row = summary.iloc[0]
    assert (row["n"], row["mean"], row["min"], row["max"]) == (4, MEAN, 1.0, 9.0)
    assert (row["low"], row["high"]) == pytest.approx((low, high), rel=1e-12)
    assert row["errorbar"] == label


def test_the_bootstrap_is_a_seeded_percentile_interval_of_the_mean():
    bar = ErrorBar("bootstrap", 0.95, 200, 7)
    assert bar.label == "95% percentile-bootstrap interval of the mean (200 resamples, seed 7)"
    # Two values: the resampled means are a, (a+b)/2, b with chances 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% percentiles are the two values themselves.
    assert bounds([3.0, 5.0], bar) == (3.0, 5.0)
    values = [1.0, 2.3, 4.1, 9.7, 5.5]
    low, high = bounds(values, bar)
    assert bounds(values, bar) == (low, high)  # the same seed, the same interval
    assert bounds(values, ErrorBar("bootstrap", 0.95, 200, 8)) != (low, high)
    assert min(values) < low < statistics.mean(values) < high < max(values)
    narrower = bounds(values, ErrorBar("bootstrap", 0.5, 200, 7))
    assert low < narrower[0] < narrower[1] < high
    assert all(math.isnan(v) for v in bounds([3.0], bar))  # one seed: no interval


def error_bar_ends(container: ErrorbarContainer) -> list[tuple[float, float]]:
    """(low, high) of each vertical bar of an errorbar container."""
    (bars,) = container.lines[2]
    return [(seg[0][1], seg[1][1]) for seg in bars.get_segments()]


def test_a_bar_beyond_the_axes_is_cut_visibly_and_said_so(store):
    uri, client, exp = store
    log_grid(client, exp, ("plain", "bn"), n_seeds=2)  # t multiplier 12.7: far off the axes
    wide = all_figures(compute(study_with(uri, "t")))["smoothness"]
    ax = wide.axes[2]  # L̂
    bottom, top = ax.get_ylim()
    cut = [line for line in ax.lines if line.get_gid() == "cut"]
    assert cut and {y for line in cut for y in line.get_ydata()} == {bottom, top}
    for container in (c for c in ax.containers if isinstance(c, ErrorbarContainer)):
        assert all(bottom <= lo <= hi <= top for lo, hi in error_bar_ends(container))
    assert CUT_NOTE in wide.get_suptitle().replace("\n", " ")
    # min–max bars stay within the runs' values, which the axes span: nothing is cut.
    fitted = all_figures(compute(study_with(uri, "range")))["smoothness"]
    assert not [line for ax in fitted.axes for line in ax.lines if line.get_gid() == "cut"]
    assert CUT_NOTE not in fitted.get_suptitle().replace("\n", " ")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.80, 0.82, 0.87], [0.78, 0.79, 0.83]),
        ([1.0, 2.0], [0.5, 0.7, 0.9, 3.0]),
        ([0.1, 0.1, 0.1], [0.2, 0.3, 0.25]),  # one group without spread
        ([0.1, 0.1], [0.2, 0.2]),  # neither: the difference is exact
    ],
)
def test_welch_is_scipy_s_unequal_variance_interval(a, b):
    want = stats.ttest_ind(a, b, equal_var=False)
    ends = want.confidence_interval(0.9)
    got = welch(a, b, 0.9)
    assert (got.estimate, got.low, got.high) == pytest.approx((np.mean(a) - np.mean(b), *ends))
    if np.var(a) + np.var(b) > 0:
        assert got.dof == pytest.approx(want.df)
