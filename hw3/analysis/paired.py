"""Whole-run comparisons, paired by seed: each run summed up in one number (a metric's mean over
its passes, or its final-pass value), two models compared seed by seed (a seed fixes the data
order, so the two runs of a seed saw the same minibatches), with the paired difference's error
bar, the ratio, and how many seeds that bar would need to tell the two apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hw3.analysis.intervals import ErrorBar, bounds, normal_quantile, t_quantile

SUMMARIES = {"mean": "mean over passes", "final": "final pass"}  # how a run is summed up
WHOLE_RUN = "smoothness/L"  # the metric a study's whole-run comparisons sum up
SEEDS_CAP = 10_000  # beyond this many seeds, "needed" is not worth a number
NARROWING = ("t", "se", "bootstrap")  # the bars that narrow as seeds are added


@dataclass(frozen=True)
class Paired:
    """Model b against model a, seed by seed, on one number per run."""

    a: str
    b: str
    metric: str
    summary: str  # a key of SUMMARIES
    seeds: tuple[int, ...]
    values_a: tuple[float, ...]  # per seed, in the order of `seeds`
    values_b: tuple[float, ...]
    low: float  # the error bar of the mean paired difference b − a
    high: float
    needed: int | None  # seeds for that bar to exclude 0 at this effect and spread
    needed_t: int | None  # the same for the 95% Student-t interval

    @property
    def differences(self) -> np.ndarray:
        """b − a per seed."""
        return np.subtract(self.values_b, self.values_a)

    @property
    def difference(self) -> float:
        """The mean paired difference b − a."""
        return float(self.differences.mean())

    @property
    def ratio(self) -> float:
        """mean(b) / mean(a) over the seeds."""
        return float(np.mean(self.values_b) / np.mean(self.values_a))

    @property
    def lower(self) -> int:
        """The seeds at which b's value is below a's."""
        return int((self.differences < 0).sum())

    @property
    def separated(self) -> bool:
        """Whether the error bar of the difference excludes 0."""
        return self.low > 0 or self.high < 0


def seeds_needed(mean: float, sd: float, bar: ErrorBar) -> int | None:
    """The fewest seeds (>= 2) for `bar` around a mean paired difference `mean` with sample
    spread `sd` to exclude 0, if the bar narrows with more seeds (t, se, bootstrap as its
    normal approximation); None if it never would (range, sd: they do not narrow; no effect),
    or only beyond SEEDS_CAP."""
    if mean == 0 or math.isnan(mean) or math.isnan(sd):
        return None
    if bar.kind not in NARROWING:
        return None
    n = np.arange(2, SEEDS_CAP + 1)
    if bar.kind == "t":
        multiplier = t_quantile(bar.confidence, n - 1)
    else:
        multiplier = 1.0 if bar.kind == "se" else normal_quantile(bar.confidence)
    narrow = np.flatnonzero(multiplier * sd / np.sqrt(n) < abs(mean))
    return int(n[narrow[0]]) if narrow.size else None


def run_values(tidy: pd.DataFrame, a: str, b: str, metric: str, summary: str) -> pd.DataFrame:
    """Per seed both groups ran, each one's `metric` summed up over the passes both logged
    (columns seed, a, b)."""
    rows = tidy[tidy["metric"] == metric]
    both = rows[rows["model"] == a][["seed", "pass", "value"]].merge(
        rows[rows["model"] == b][["seed", "pass", "value"]], on=["seed", "pass"]
    )
    by_seed = both.sort_values("pass").groupby("seed")
    picked = by_seed[["value_x", "value_y"]].mean() if summary == "mean" else by_seed.last()
    return picked.reset_index()[["seed", "value_x", "value_y"]].set_axis(["seed", a, b], axis=1)


def paired(
    tidy: pd.DataFrame, a: str, b: str, metric: str, summary: str, bar: ErrorBar
) -> Paired | None:
    """b against a on `metric`, summed up per run as `summary`; None without a common seed."""
    values = run_values(tidy, a, b, metric, summary)
    if values.empty:
        return None
    diff = (values[b] - values[a]).to_numpy()
    low, high = bounds(diff, bar)
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else math.nan
    t95 = ErrorBar("t", 0.95, bar.resamples, bar.seed)
    return Paired(
        a=a,
        b=b,
        metric=metric,
        summary=summary,
        seeds=tuple(int(s) for s in values["seed"]),
        values_a=tuple(float(v) for v in values[a]),
        values_b=tuple(float(v) for v in values[b]),
        low=low,
        high=high,
        needed=seeds_needed(float(diff.mean()), sd, bar),
        needed_t=seeds_needed(float(diff.mean()), sd, t95),
    )


def comparisons(
    tidy: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str, bar: ErrorBar
) -> list[Paired]:
    """Every pair on `metric`, each summed up both ways (SUMMARIES), where they share a seed."""
    found = (paired(tidy, a, b, metric, s, bar) for a, b in pairs for s in SUMMARIES)
    return [p for p in found if p is not None]
