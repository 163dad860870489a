"""What a study shows, as numbers: computed once here; the report and the figures only render it.

Per group and pass the aggregates are the study's `summary`; on top of it, for every pair of
groups that differ in their model only: L̂ pass by pass and seed by seed, the whole-run L̂ paired
by seed, the final accuracy gap; per group: 1/L̂ against η, the time per pass, λ_max against 2/η;
across learning rates: stability and whether the smoother model tolerates larger steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from hw3.analysis.intervals import Difference, welch
from hw3.analysis.paired import WHOLE_RUN, Paired, comparisons
from hw3.analysis.stability import Stability
from hw3.analysis.study import (
    Ordering,
    Study,
    common_passes,
    comparable_pairs,
    describe,
    learning_rate,
    per_run,
    run_means,
    seedwise_order,
)

SMOOTHNESS = "smoothness/L"
ACCURACY = "test/acc"
SHARPNESS = "smoothness/sharpness"
# The timed phases, in the order the report lists them.
TIMES = ("time/train_pass_s", "time/smoothness_s", "time/eval_s")
# The landscape metrics compared seed by seed, in the order the report lists them.
LANDSCAPE = ("smoothness/beta", "smoothness/grad_pred", "smoothness/loss_range", SHARPNESS)


@dataclass(frozen=True)
class PassByPass:
    """Group b's mean L̂ against group a's at each pass both logged, and seed by seed."""

    a: str
    b: str
    passes: tuple[int, ...]
    mean_a: tuple[float, ...]  # per pass, in the order of `passes`
    mean_b: tuple[float, ...]
    seedwise: Ordering | None

    @property
    def below(self) -> int:
        """The passes at which b's mean is below a's."""
        return sum(vb < va for va, vb in zip(self.mean_a, self.mean_b, strict=True))

    @property
    def last_ratio(self) -> float:
        """b's mean over a's at the last common pass."""
        return self.mean_b[-1] / self.mean_a[-1]


@dataclass(frozen=True)
class StepBound:
    """A group's step-size bound 1/L̂ against its learning rate η, per pass and per run."""

    group: str
    lr: float
    passes: int  # with a mean L̂
    passes_above: int  # at which 1/(mean L̂) > η
    bound_min: float  # of 1/(mean L̂) over the passes
    bound_max: float
    runs: int
    run_passes: int  # distinct passes the runs logged
    points: int  # (run, pass) points
    points_above: int  # at which the run's 1/L̂ > η
    point_min: float  # of a run's 1/L̂
    point_max: float


@dataclass(frozen=True)
class AccuracyGap:
    """mean(a) − mean(b) of a metric at the last pass both logged, with Welch's interval."""

    a: str
    b: str
    metric: str
    at_pass: int
    n_a: int
    n_b: int
    estimate: float
    interval: Difference | None  # None: a group has a single seed

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval excludes 0 (False without one)."""
        return self.interval is not None and (self.interval.low > 0 or self.interval.high < 0)


@dataclass(frozen=True)
class Edge:
    """A group's λ_max against the edge of stability 2/η, over its (run, pass) points."""

    group: str
    edge: float
    points: int
    above: int
    low: float
    high: float


@dataclass(frozen=True)
class Verdict:
    """Is the model smoothest by L̂ (largest reference 1/L̂) also the most stable?"""

    inv_l: dict[str, float]  # line → its model's reference 1/L̂ (the lines that have one)
    largest_stable: dict[str, float]  # line → largest stable η (NaN: none)

    @property
    def stated(self) -> bool:
        """Whether two or more lines have both numbers."""
        return len(self.inv_l) >= 2

    @property
    def smoothest(self) -> str:
        """The line with the largest reference 1/L̂."""
        return max(self.inv_l, key=self.inv_l.__getitem__)

    @property
    def winners(self) -> tuple[str, ...]:
        """The lines with the largest stable learning rate."""
        reach = {k: -math.inf if math.isnan(v) else v for k, v in self.largest_stable.items()}
        top = max(reach.values())
        return tuple(k for k, v in reach.items() if v == top)

    @property
    def answer(self) -> str:
        """'yes', 'tied' (the smoothest shares the largest stable rate) or 'no'."""
        if self.winners == (self.smoothest,):
            return "yes"
        return "tied" if self.smoothest in self.winners else "no"


@dataclass(frozen=True)
class Findings:
    """Every number the report states and the figures draw, computed from one study."""

    study: Study
    smoothness: tuple[PassByPass, ...]
    step_bounds: tuple[StepBound, ...]
    accuracy: tuple[AccuracyGap, ...]
    whole_runs: tuple[Paired, ...]
    landscape: tuple[Ordering, ...]  # per landscape metric and comparable pair
    edges: tuple[Edge, ...]
    times: pd.DataFrame  # per phase and group: each run's mean over passes, described (STATS)
    stability: Stability | None
    verdict: Verdict | None


def pass_by_pass(study: Study, pairs: list[tuple[str, str]]) -> list[PassByPass]:
    """L̂ of each comparable pair, pass by pass and seed by seed."""
    return [
        PassByPass(
            a,
            b,
            tuple(int(p) for p in both["pass"]),
            tuple(both[a].tolist()),
            tuple(both[b].tolist()),
            seedwise_order(study.tidy, a, b, SMOOTHNESS),
        )
        for a, b, both in common_passes(study.summary, pairs, SMOOTHNESS)
    ]


def step_bounds(study: Study) -> list[StepBound]:
    """1/L̂ against η for each group that logged L̂."""
    out = []
    rows = study.tidy[study.tidy["metric"] == SMOOTHNESS]
    means = study.summary[study.summary["metric"] == SMOOTHNESS]
    for g in study.groups:
        bound = 1 / means.loc[means["model"] == g, "mean"]
        if bound.empty:
            continue
        mine = rows[rows["model"] == g]
        points = 1 / mine["value"]
        lr = learning_rate(study, g)
        out.append(
            StepBound(
                group=g,
                lr=lr,
                passes=len(bound),
                passes_above=int((bound > lr).sum()),
                bound_min=float(bound.min()),
                bound_max=float(bound.max()),
                runs=int(mine["run"].nunique()),
                run_passes=int(mine["pass"].nunique()),
                points=len(mine),
                points_above=int((points > lr).sum()),
                point_min=float(points.min()),
                point_max=float(points.max()),
            )
        )
    return out


def accuracy_gaps(study: Study, pairs: list[tuple[str, str]]) -> list[AccuracyGap]:
    """The final test-accuracy gap of each comparable pair, with Welch's t interval."""
    out = []
    for a, b, both in common_passes(study.summary, pairs, ACCURACY):
        at = int(both["pass"].max())
        va, vb = per_run(study.tidy, a, ACCURACY, at), per_run(study.tidy, b, ACCURACY, at)
        estimate = sum(va) / len(va) - sum(vb) / len(vb)
        interval = welch(va, vb, study.errorbar.confidence)
        out.append(AccuracyGap(a, b, ACCURACY, at, len(va), len(vb), estimate, interval))
    return out


def landscape_orderings(study: Study, pairs: list[tuple[str, str]]) -> list[Ordering]:
    """Seed-by-seed orderings of each landscape metric logged, per comparable pair."""
    present = study.metrics
    found = (
        seedwise_order(study.tidy, a, b, metric)
        for metric in LANDSCAPE
        if metric in present
        for a, b in pairs
    )
    return [o for o in found if o is not None]


def edges(study: Study) -> list[Edge]:
    """λ_max against 2/η per group that logged it."""
    rows = study.tidy[study.tidy["metric"] == SHARPNESS]
    out = []
    for g in study.groups:
        values = rows.loc[rows["model"] == g, "value"]
        if values.empty:
            continue
        edge = 2 / learning_rate(study, g)
        above = int((values > edge).sum())
        out.append(Edge(g, edge, len(values), above, float(values.min()), float(values.max())))
    return out


def times(study: Study) -> pd.DataFrame:
    """Seconds per pass: each run's mean over its passes, described per phase and group."""
    frames = [
        describe(run_means(study.tidy, m), ["model"], study.errorbar).assign(phase=m)
        for m in TIMES
        if m in study.metrics
    ]
    columns = ["phase", "model", "n", "mean", "std", "min", "max", "low", "high"]
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


def verdict(stability: Stability) -> Verdict:
    """The stability verdict's numbers: per line with a reference 1/L̂, it and the largest
    stable learning rate."""
    inv = stability.reference.table["inv_L"].dropna()
    lines = [line for line in stability.lines if stability.model(line) in inv.index]
    return Verdict(
        inv_l={line: float(inv[stability.model(line)]) for line in lines},
        largest_stable={line: stability.largest_stable[line] for line in lines},
    )


def compute(study: Study, stability: Stability | None = None) -> Findings:
    """Every finding of `study` (and of its `stability` across learning rates, if any)."""
    pairs = comparable_pairs(study)
    return Findings(
        study=study,
        smoothness=tuple(pass_by_pass(study, pairs)),
        step_bounds=tuple(step_bounds(study)),
        accuracy=tuple(accuracy_gaps(study, pairs)),
        whole_runs=tuple(comparisons(study.tidy, pairs, WHOLE_RUN, study.errorbar)),
        landscape=tuple(landscape_orderings(study, pairs)),
        edges=tuple(edges(study)),
        times=times(study),
        stability=stability,
        verdict=None if stability is None else verdict(stability),
    )
