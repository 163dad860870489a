"""The store's training runs as one tidy table, its aggregates across seeds, and comparisons."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from scipy import stats

from hw3.engine.models import MODELS
from hw3.tracking.schema import PLACE_KEYS
from hw3.tracking.store import Store

# Params that say where or how a run ran, not what it computed: they never split a group.
INCIDENTAL = frozenset((*PLACE_KEYS, "seed", "trainer.device"))
CONFIDENCE = 0.95  # of every interval: the bands, the summary's ci95 and the Welch interval
FETCH_THREADS = 8  # metric-history requests in flight (one per run and metric)
TIDY = ["run", "model", "seed", "pass", "metric", "value"]
SUMMARY = ["model", "pass", "metric", "mean", "std", "n", "ci95"]


class AnalysisError(RuntimeError):
    """The store holds nothing this analysis can use (one-line message)."""


@dataclass(frozen=True)
class TrainRun:
    """One training run as the analysis sees it."""

    run_id: str
    name: str
    model: str
    seed: int
    status: str
    start_time: int
    params: dict[str, str] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    error: str = ""

    @classmethod
    def from_mlflow(cls, run: Run) -> TrainRun:
        """The fields the analysis uses, out of an MLflow run."""
        tags = run.data.tags
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id,
            model=tags["model"],
            seed=int(tags["seed"]),
            status=run.info.status,
            start_time=run.info.start_time or 0,
            params=dict(run.data.params),
            metrics=tuple(sorted(run.data.metrics)),
            error=tags.get("error", ""),
        )


@dataclass(frozen=True)
class Study:
    """What one analysis looks at: the runs it uses and leaves out, their histories, aggregates."""

    experiment: str
    experiment_id: str
    selection: str
    runs: tuple[TrainRun, ...]
    left_out: tuple[tuple[TrainRun, str], ...]  # (run, why)
    labels: dict[str, str]  # run id → group label
    groups: tuple[str, ...]  # group labels in display order
    tidy: pd.DataFrame
    summary: pd.DataFrame


def selection(sweep_id: str | None, filter_string: str | None) -> str:
    """The MLflow filter for training runs, of one sweep (id or id prefix) and `filter_string`."""
    clauses = ["tags.kind = 'train'"]
    if sweep_id:
        clauses.append(f"tags.sweep_id LIKE '{sweep_id}%'")
    if filter_string:
        clauses.append(filter_string)
    return " and ".join(clauses)


def existing_experiment(store: Store, name: str) -> str:
    """The id of experiment `name`, which must exist (an analysis never creates one)."""
    experiment = store.client.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise AnalysisError(
            f"no experiment {name!r} in the tracking store; set tracking.experiment"
        )
    return experiment.experiment_id


def search(store: Store, experiment_id: str, where: str) -> list[Run]:
    """Every run of the experiment that matches `where` (all pages), newest first."""
    runs: list[Run] = []
    token = None
    try:
        while True:
            page = store.client.search_runs(
                [experiment_id], where, order_by=["attributes.start_time DESC"], page_token=token
            )
            runs += page
            if not (token := page.token):
                return runs
    except MlflowException as err:
        raise AnalysisError(
            f"cannot select runs with {where!r}: {err.message.splitlines()[0]}"
        ) from err


def differing(runs: Sequence[TrainRun]) -> list[str]:
    """The params, other than incidental ones, whose values are not the same in all `runs`."""
    keys = sorted({k for r in runs for k in r.params} - INCIDENTAL)
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def group_labels(runs: Sequence[TrainRun]) -> dict[str, str]:
    """Each run's group: its model, with the params that differ between that model's runs."""
    labels = {}
    for model in {r.model for r in runs}:
        mine = [r for r in runs if r.model == model]
        split = [k for k in differing(mine) if k != "model.name"]
        for r in mine:
            extra = ", ".join(f"{k}={r.params.get(k, 'unset')}" for k in split)
            labels[r.run_id] = f"{model} ({extra})" if extra else model
    return labels


def order_groups(labels: dict[str, str], runs: Sequence[TrainRun]) -> tuple[str, ...]:
    """Group labels in the models' canonical order (plain, bn, stride, others), then by name."""
    model_of = {labels[r.run_id]: r.model for r in runs}
    rank = {m: i for i, m in enumerate(MODELS)}
    return tuple(sorted(model_of, key=lambda g: (rank.get(model_of[g], len(rank)), g)))


def partition(
    runs: Sequence[TrainRun],
) -> tuple[list[TrainRun], list[tuple[TrainRun, str]], dict[str, str]]:
    """The FINISHED runs to use (the newest per group and seed), the others with why, labels."""
    finished = [r for r in runs if r.status == "FINISHED"]
    left_out = [(r, f"status {r.status}") for r in runs if r.status != "FINISHED"]
    labels = group_labels(finished)
    kept: dict[tuple[str, int], TrainRun] = {}
    for r in sorted(finished, key=lambda r: r.start_time, reverse=True):
        newer = kept.setdefault((labels[r.run_id], r.seed), r)
        if newer is not r:
            left_out.append((r, f"superseded by newer run {newer.run_id} of the same seed"))
    used = sorted(kept.values(), key=lambda r: (labels[r.run_id], r.seed))
    return used, left_out, {r.run_id: labels[r.run_id] for r in used}


def fetch_history(store: Store, runs: Sequence[TrainRun], labels: dict[str, str]) -> pd.DataFrame:
    """Every logged point of every metric of `runs`, one row each (columns TIDY)."""
    jobs = [(r, key) for r in runs for key in r.metrics]
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        histories = pool.map(
            lambda job: store.client.get_metric_history(job[0].run_id, job[1]), jobs
        )
        rows = [
            (r.run_id, labels[r.run_id], r.seed, m.step, key, m.value, m.timestamp)
            for (r, key), history in zip(jobs, histories, strict=True)
            for m in history
        ]
    tidy = pd.DataFrame(rows, columns=[*TIDY, "timestamp"])
    # A point logged twice (a resumed run) counts once: the later value.
    tidy = tidy.sort_values("timestamp").drop_duplicates(["run", "metric", "pass"], keep="last")
    tidy = tidy[np.isfinite(tidy["value"])]  # 1/L̂ is inf where L̂ = 0
    return tidy[TIDY].sort_values(["model", "seed", "metric", "pass"]).reset_index(drop=True)


def ci_halfwidth(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of the Student-t interval for a mean (NaN for n < 2)."""
    dof = (n - 1).where(n > 1)
    return stats.t.ppf((1 + CONFIDENCE) / 2, dof) * std / np.sqrt(n)


def describe(values: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1), n and ci95 of column `value` per `by`."""
    out = values.groupby(by, sort=False)["value"].agg(mean="mean", std="std", n="count")
    out = out.reset_index()
    out["ci95"] = ci_halfwidth(out["std"], out["n"])
    return out


def aggregate(tidy: pd.DataFrame, groups: Sequence[str]) -> pd.DataFrame:
    """Mean, std, n and ci95 per group, pass and metric (columns SUMMARY), groups in order."""
    out = describe(tidy, ["model", "pass", "metric"])
    rank = out["model"].map({g: i for i, g in enumerate(groups)})
    return (
        out.assign(_rank=rank)
        .sort_values(["_rank", "pass", "metric"])[SUMMARY]
        .reset_index(drop=True)
    )


def run_means(tidy: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each run's mean of `metric` over its passes (columns run, model, value)."""
    rows = tidy[tidy["metric"] == metric]
    return rows.groupby(["run", "model"], sort=False, as_index=False)["value"].mean()


def per_run(tidy: pd.DataFrame, group: str, metric: str, at_pass: int) -> list[float]:
    """The values of `metric` at pass `at_pass` of the group's runs."""
    rows = tidy[(tidy["model"] == group) & (tidy["metric"] == metric) & (tidy["pass"] == at_pass)]
    return rows["value"].tolist()


def series(summary: pd.DataFrame, group: str, metric: str) -> pd.DataFrame:
    """The aggregate rows of one group and metric, by pass."""
    rows = summary[(summary["model"] == group) & (summary["metric"] == metric)]
    return rows.sort_values("pass").reset_index(drop=True)


def common_passes(
    summary: pd.DataFrame, groups: Sequence[str], metric: str
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """Each pair (a, b) of `groups` that both logged `metric` at some pass, with the means of
    `metric` at those passes (columns pass, a, b)."""
    for a, b in combinations(groups, 2):
        ma = series(summary, a, metric)[["pass", "mean"]].rename(columns={"mean": a})
        mb = series(summary, b, metric)[["pass", "mean"]].rename(columns={"mean": b})
        if not (both := ma.merge(mb, on="pass")).empty:
            yield a, b, both


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with a Welch t interval."""

    estimate: float
    low: float
    high: float
    dof: float


def welch(a: Sequence[float], b: Sequence[float]) -> Difference | None:
    """Welch's t interval (unequal variances) for mean(a) − mean(b); None if either n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(CONFIDENCE)
    estimate = float(np.mean(a) - np.mean(b))
    return Difference(estimate, float(interval.low), float(interval.high), float(test.df))


def load_study(
    store: Store, experiment: str, *, sweep_id: str | None, filter_string: str | None
) -> Study:
    """Select the experiment's training runs, fetch their histories and aggregate them."""
    experiment_id = existing_experiment(store, experiment)
    where = selection(sweep_id, filter_string)
    found = [TrainRun.from_mlflow(r) for r in search(store, experiment_id, where)]
    if not found:
        raise AnalysisError(f"no training runs in experiment {experiment!r} match {where!r}")
    runs, left_out, labels = partition(found)
    if not runs:
        raise AnalysisError(
            f"none of the {len(found)} training runs in experiment {experiment!r} that match "
            f"{where!r} has FINISHED"
        )
    groups = order_groups(labels, runs)
    tidy = fetch_history(store, runs, labels)
    if tidy.empty:
        raise AnalysisError(f"the {len(runs)} finished runs of {experiment!r} logged no metrics")
    return Study(
        experiment=experiment,
        experiment_id=experiment_id,
        selection=where,
        runs=tuple(runs),
        left_out=tuple(left_out),
        labels=labels,
        groups=groups,
        tidy=tidy,
        summary=aggregate(tidy, groups),
    )


def seeds(study: Study, group: str) -> list[int]:
    """The seeds of a group's runs."""
    return sorted(r.seed for r in study.runs if study.labels[r.run_id] == group)


def param(study: Study, group: str, key: str) -> str | None:
    """A param's value in a group's runs (None if they disagree or lack it)."""
    values = {r.params.get(key) for r in study.runs if study.labels[r.run_id] == group}
    return values.pop() if len(values) == 1 else None


def learning_rate(study: Study, group: str) -> float:
    """The learning rate a group's runs used (NaN if unknown)."""
    value = param(study, group, "optimizer.lr")
    return math.nan if value is None else float(value)
