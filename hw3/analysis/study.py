"""The store's training runs as one tidy table, its aggregates across seeds, and comparisons."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import combinations

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from hw3.analysis.intervals import ErrorBar, bounds
from hw3.engine.choices import MODELS
from hw3.tracking.errors import first_line
from hw3.tracking.reading import metric_histories, search_runs
from hw3.tracking.schema import PLACE_KEYS
from hw3.tracking.store import Store

# Params that say where or how a run ran, not what it computed: they never split a group.
# (New runs log them as tags; older runs have them as params.)
INCIDENTAL = frozenset((*PLACE_KEYS, "seed"))
UNKNOWN_VERSION = "unknown"  # the engine version of runs logged before the tag existed
TIDY = ["run", "model", "seed", "pass", "metric", "value"]
STATS = ["n", "mean", "std", "min", "max", "low", "high"]
SUMMARY = ["model", "pass", "metric", "n", "mean", "std", "min", "max", "errorbar", "low", "high"]
# Run ids per search when selecting a sweep's jobs: MLflow parses a filter at about 0.2 ms per
# id here, and SQLite binds each id as one parameter.
IDS_PER_FILTER = 500
SWEEPS_NAMED = 5  # sweep ids an error names when it cannot name them all (the newest)


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
    engine_version: str = UNKNOWN_VERSION
    sweep_id: str = ""  # of the sweep that last ran it
    diverged_pass: int | None = None  # the pass at which it diverged; None if it did not
    params: dict[str, str] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    error: str = ""

    @classmethod
    def from_mlflow(cls, run: Run) -> TrainRun:
        """The fields the analysis uses, out of an MLflow run."""
        tags = run.data.tags
        diverged = tags.get("diverged") == "true"
        return cls(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id,
            model=tags["model"],
            seed=int(tags["seed"]),
            status=run.info.status,
            start_time=run.info.start_time or 0,
            engine_version=tags.get("engine_version", UNKNOWN_VERSION),
            sweep_id=tags.get("sweep_id", ""),
            diverged_pass=int(tags.get("diverged_pass", 0)) if diverged else None,
            params=dict(run.data.params),
            metrics=tuple(sorted(run.data.metrics)),
            error=tags.get("error", ""),
        )

    @property
    def diverged(self) -> bool:
        """Whether training diverged (a result: the run counts, FINISHED or FAILED)."""
        return self.diverged_pass is not None

    @property
    def is_result(self) -> bool:
        """FINISHED, or diverged: a run whose numbers an analysis uses."""
        return self.status == "FINISHED" or self.diverged


@dataclass(frozen=True)
class Study:
    """What one analysis looks at: the runs it uses and leaves out, their histories, aggregates."""

    experiment: str
    experiment_id: str
    selection: str  # which runs, in words: the MLflow filter and the sweeps
    engine_version: str  # of every run used
    errorbar: ErrorBar
    runs: tuple[TrainRun, ...]
    left_out: tuple[tuple[TrainRun, str], ...]  # (run, why)
    labels: dict[str, str]  # run id → group label
    groups: tuple[str, ...]  # group labels in display order
    tidy: pd.DataFrame
    summary: pd.DataFrame

    @cached_property
    def metrics(self) -> frozenset[str]:
        """The metrics the used runs logged."""
        return frozenset(self.tidy["metric"].unique())


def selection(filter_string: str | None) -> str:
    """The MLflow filter for training runs, narrowed by `filter_string`."""
    clauses = ["tags.kind = 'train'"]
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
    """Every run of the experiment that matches `where`, newest first; a filter MLflow refuses
    fails in one line."""
    try:
        return search_runs(store, [experiment_id], where)
    except MlflowException as err:
        raise AnalysisError(f"cannot select runs with {where!r}: {first_line(err)}") from err


def sweep_jobs(
    store: Store, experiment: str, experiment_id: str, prefix: str
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The ids of the sweeps whose id starts with `prefix`, and the runs of every job they
    asked for, run or skipped as already FINISHED (their `job.*` tags)."""
    if not re.fullmatch(r"[0-9a-f]+", prefix):
        raise AnalysisError(
            f"sweep_id={prefix!r} is not a sweep id: give its hex digits or a prefix of them "
            "(the parent run's name is sweep-<id>)"
        )
    parents = search(
        store, experiment_id, f"tags.kind = 'sweep' and tags.sweep_id LIKE '{prefix}%'"
    )
    if not parents:
        raise AnalysisError(
            f"no sweep in experiment {experiment!r} has an id starting with {prefix!r}; set "
            f"sweep_id to {known_sweeps(store, experiment_id)} or leave it out"
        )
    ids = tuple(sorted({r.data.tags["sweep_id"] for r in parents}))
    jobs = {v for r in parents for k, v in r.data.tags.items() if k.startswith("job.")}
    return ids, frozenset(jobs)


def known_sweeps(store: Store, experiment_id: str) -> str:
    """The experiment's sweep ids as an error names them: all of them, or the newest few."""
    newest = dict.fromkeys(  # newest first, each once (a sweep has one parent)
        r.data.tags["sweep_id"] for r in search(store, experiment_id, "tags.kind = 'sweep'")
    )
    if not newest:
        return "one of none (no sweep was logged)"
    if len(newest) <= SWEEPS_NAMED:
        return f"one of {', '.join(sorted(newest))}"
    named = ", ".join(list(newest)[:SWEEPS_NAMED])
    return f"one of the {len(newest)} sweeps' ids, the newest {named}, …"


def select(
    store: Store, experiment_id: str, where: str, jobs: frozenset[str], prefix: str
) -> list[Run]:
    """The runs that match `where` among a sweep's `jobs` or tagged with a sweep id starting
    with `prefix`, selected by the store: first by that tag (the runs the sweep last ran, and
    those logged before parents listed their jobs), then the other jobs (run by an earlier
    sweep) by id, IDS_PER_FILTER per search."""
    found = search(store, experiment_id, f"{where} and tags.sweep_id LIKE '{prefix}%'")
    ids = sorted(jobs - {r.info.run_id for r in found})
    for i in range(0, len(ids), IDS_PER_FILTER):
        listed = ", ".join(f"'{r}'" for r in ids[i : i + IDS_PER_FILTER])
        found += search(store, experiment_id, f"{where} and attributes.run_id IN ({listed})")
    unique = {r.info.run_id: r for r in found}
    return sorted(unique.values(), key=lambda r: r.info.start_time or 0, reverse=True)


def differing(runs: Sequence[TrainRun]) -> list[str]:
    """The params, other than incidental ones, whose values are not the same in all `runs`."""
    keys = sorted({k for r in runs for k in r.params} - INCIDENTAL)
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def group_labels(runs: Sequence[TrainRun], ignore: frozenset[str]) -> dict[str, str]:
    """Each run's group: its model, with the params (except `ignore`) that differ between that
    model's runs."""
    labels = {}
    for model in {r.model for r in runs}:
        mine = [r for r in runs if r.model == model]
        split = [k for k in differing(mine) if k != "model.name" and k not in ignore]
        for r in mine:
            extra = ", ".join(f"{k}={r.params.get(k, 'unset')}" for k in split)
            labels[r.run_id] = f"{model} ({extra})" if extra else model
    return labels


def order_groups(labels: dict[str, str], runs: Sequence[TrainRun]) -> tuple[str, ...]:
    """Group labels in the models' canonical order (plain, bn, stride, others), then by
    learning rate where it splits them, then by name."""
    runs_of = {labels[r.run_id]: r for r in runs}
    rank = {m: i for i, m in enumerate(MODELS)}

    def key(group: str) -> tuple[int, float, str]:
        run = runs_of[group]
        return rank.get(run.model, len(rank)), float(run.params.get("optimizer.lr", 0)), group

    return tuple(sorted(runs_of, key=key))


def newest_version(runs: Sequence[TrainRun]) -> str:
    """The engine version of the most recently started run."""
    return max(runs, key=lambda r: r.start_time).engine_version


def partition(
    runs: Sequence[TrainRun],
) -> tuple[str, list[TrainRun], list[tuple[TrainRun, str]], dict[str, str]]:
    """The newest engine version; the runs to use (FINISHED or diverged, of that version, the
    newest per group and seed); the others with why; the used runs' group labels."""
    version = newest_version(runs)
    left_out = [
        (r, f"engine version {r.engine_version}, older than {version}")
        for r in runs
        if r.engine_version != version
    ]
    current = [r for r in runs if r.engine_version == version]
    results = [r for r in current if r.is_result]
    left_out += [(r, f"status {r.status}") for r in current if not r.is_result]
    labels = group_labels(results, frozenset())
    kept: dict[tuple[str, int], TrainRun] = {}
    for r in sorted(results, key=lambda r: r.start_time, reverse=True):
        newer = kept.setdefault((labels[r.run_id], r.seed), r)
        if newer is not r:
            left_out.append((r, f"superseded by newer run {newer.run_id} of the same seed"))
    used = sorted(kept.values(), key=lambda r: (labels[r.run_id], r.seed))
    return version, used, left_out, {r.run_id: labels[r.run_id] for r in used}


def fetch_history(store: Store, runs: Sequence[TrainRun], labels: dict[str, str]) -> pd.DataFrame:
    """Every logged point of every metric of `runs`, one row each (columns TIDY)."""
    points = metric_histories(store, {r.run_id: r.metrics for r in runs})
    tidy = pd.DataFrame(points, columns=["run", "metric", "pass", "value", "timestamp"])
    del points  # the frame holds them now: a 10,000-run study's tuples take hundreds of MB
    # A point logged twice (a resumed run) counts once: the later value.
    tidy = tidy.sort_values("timestamp").drop_duplicates(["run", "metric", "pass"], keep="last")
    seeds = {r.run_id: r.seed for r in runs}
    tidy = tidy[np.isfinite(tidy["value"])].assign(  # 1/L̂ is inf where L̂ = 0
        model=lambda t: t["run"].map(labels), seed=lambda t: t["run"].map(seeds)
    )
    return tidy[TIDY].sort_values(["model", "seed", "metric", "pass"]).reset_index(drop=True)


def describe(values: pd.DataFrame, by: list[str], bar: ErrorBar) -> pd.DataFrame:
    """n, mean, sample std (ddof=1), min, max and the error bar's low and high of column
    `value` per `by` (columns `by` + STATS)."""
    grouped = values.groupby(by, sort=False)["value"]
    out = grouped.agg(n="count", mean="mean", std="std", min="min", max="max").reset_index()
    ends = [bounds(v.to_numpy(), bar) for _, v in grouped]
    out["low"] = [low for low, _ in ends]
    out["high"] = [high for _, high in ends]
    return out[[*by, *STATS]]


def aggregate(tidy: pd.DataFrame, groups: Sequence[str], bar: ErrorBar) -> pd.DataFrame:
    """The statistics per group, pass and metric (columns SUMMARY), groups in order."""
    out = describe(tidy, ["model", "pass", "metric"], bar)
    out["errorbar"] = bar.label
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


def comparable_pairs(study: Study) -> list[tuple[str, str]]:
    """The pairs of groups that differ in their model only, its variant's keys included (never
    across learning rates)."""
    keys = [k for k in differing(study.runs) if not k.startswith("model.")]
    return [
        (a, b)
        for a, b in combinations(study.groups, 2)
        if all(param(study, a, k) == param(study, b, k) for k in keys)
    ]


def common_passes(
    summary: pd.DataFrame, pairs: Sequence[tuple[str, str]], metric: str
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """Each pair (a, b) that both logged `metric` at some pass, with the means of `metric` at
    those passes (columns pass, a, b)."""
    for a, b in pairs:
        ma = series(summary, a, metric)[["pass", "mean"]].rename(columns={"mean": a})
        mb = series(summary, b, metric)[["pass", "mean"]].rename(columns={"mean": b})
        if not (both := ma.merge(mb, on="pass")).empty:
            yield a, b, both


@dataclass(frozen=True)
class Ordering:
    """Seed by seed and pass by pass: is `above`'s value of a metric above `below`'s?"""

    metric: str
    pair: tuple[str, str]  # the groups as compared (a, b), whichever is above
    above: str
    below: str
    seeds: tuple[int, ...]  # the seeds both groups ran
    pairs: int  # (seed, pass) points both logged
    holds: int  # of which above's value is higher
    passes: int  # passes both logged
    passes_every_seed: int  # passes at which it is higher for every seed
    exceptions: tuple[tuple[int, int], ...]  # (seed, pass) where it is not higher


def seedwise_order(tidy: pd.DataFrame, a: str, b: str, metric: str) -> Ordering | None:
    """How `metric` of groups a and b compares at each seed and pass both logged, stated for
    the group that is higher at most points; None if they share no such point."""
    rows = tidy[tidy["metric"] == metric]
    va = rows[rows["model"] == a][["seed", "pass", "value"]]
    vb = rows[rows["model"] == b][["seed", "pass", "value"]]
    both = va.merge(vb, on=["seed", "pass"], suffixes=("_a", "_b"))
    if both.empty:
        return None
    pair = (a, b)
    higher = both["value_a"] > both["value_b"]
    if int(higher.sum()) * 2 < len(both):
        a, b, higher = b, a, both["value_b"] > both["value_a"]
    every_seed = higher.groupby(both["pass"]).all()
    return Ordering(
        metric=metric,
        pair=pair,
        above=a,
        below=b,
        seeds=tuple(sorted(int(s) for s in both["seed"].unique())),
        pairs=len(both),
        holds=int(higher.sum()),
        passes=len(every_seed),
        passes_every_seed=int(every_seed.sum()),
        exceptions=tuple(
            (int(s), int(p)) for s, p in both.loc[~higher, ["seed", "pass"]].itertuples(False)
        ),
    )


def load_study(
    store: Store,
    experiment: str,
    *,
    sweep_id: str | None,
    filter_string: str | None,
    errorbar: ErrorBar,
) -> Study:
    """Select the experiment's training runs (of one sweep's jobs if `sweep_id`, an id or its
    prefix), fetch their histories and aggregate them."""
    experiment_id = existing_experiment(store, experiment)
    where = selection(filter_string)
    described = where
    if sweep_id:
        sweeps, jobs = sweep_jobs(store, experiment, experiment_id, sweep_id)
        found = [
            TrainRun.from_mlflow(r) for r in select(store, experiment_id, where, jobs, sweep_id)
        ]
        described += f" and the jobs of sweep {', '.join(sweeps)}"
    else:
        found = [TrainRun.from_mlflow(r) for r in search(store, experiment_id, where)]
    if not found:
        raise AnalysisError(f"no training runs in experiment {experiment!r} match {described!r}")
    version, runs, left_out, labels = partition(found)
    if not runs:
        raise AnalysisError(
            f"none of the {len(found)} training runs in experiment {experiment!r} that match "
            f"{described!r} has FINISHED with engine version {version}"
        )
    groups = order_groups(labels, runs)
    tidy = fetch_history(store, runs, labels)
    if tidy.empty:
        raise AnalysisError(f"the {len(runs)} finished runs of {experiment!r} logged no metrics")
    return Study(
        experiment=experiment,
        experiment_id=experiment_id,
        selection=described,
        engine_version=version,
        errorbar=errorbar,
        runs=tuple(runs),
        left_out=tuple(left_out),
        labels=labels,
        groups=groups,
        tidy=tidy,
        summary=aggregate(tidy, groups, errorbar),
    )


def runs_of(study: Study, group: str) -> list[TrainRun]:
    """A group's runs, by seed."""
    return [r for r in study.runs if study.labels[r.run_id] == group]


def seeds(study: Study, group: str) -> list[int]:
    """The seeds of a group's runs."""
    return sorted(r.seed for r in runs_of(study, group))


def param(study: Study, group: str, key: str) -> str | None:
    """A param's value in a group's runs (None if they disagree or lack it)."""
    values = {r.params.get(key) for r in runs_of(study, group)}
    return values.pop() if len(values) == 1 else None


def learning_rate(study: Study, group: str) -> float:
    """The learning rate a group's runs used (NaN if unknown)."""
    value = param(study, group, "optimizer.lr")
    return math.nan if value is None else float(value)


def numbers_where_numeric(column: pd.Series) -> pd.Series:
    """A column of param strings as numbers if every value given is one, else as it is."""
    converted = pd.to_numeric(column, errors="coerce")
    return converted if converted.notna().sum() == column.notna().sum() else column


def as_value(text: str) -> float | str:
    """A logged value as a number if it reads as one, else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def runs_table(study: Study) -> pd.DataFrame:
    """One row per selected run, used or left out (with why): who it is, its group, status and
    config (each param a column, numbers as numbers)."""
    rank = {g: i for i, g in enumerate(study.groups)}
    used = sorted(study.runs, key=lambda r: (rank[study.labels[r.run_id]], r.seed))
    rows = [(r, study.labels[r.run_id], "") for r in used]
    rows += [(r, r.model, why) for r, why in study.left_out]
    table = pd.DataFrame(
        {
            "run": [r.run_id for r, _, _ in rows],
            "name": [r.name for r, _, _ in rows],
            "group": [group for _, group, _ in rows],
            "model": [r.model for r, _, _ in rows],
            "seed": [r.seed for r, _, _ in rows],
            "status": [r.status for r, _, _ in rows],
            "used": [not why for _, _, why in rows],
            "why": [why for _, _, why in rows],
            "diverged_pass": pd.array([r.diverged_pass for r, _, _ in rows], dtype="Int64"),
            "engine_version": [r.engine_version for r, _, _ in rows],
            "sweep_id": [r.sweep_id for r, _, _ in rows],
            "start_time": pd.to_datetime([r.start_time for r, _, _ in rows], unit="ms", utc=True),
            "error": [r.error for r, _, _ in rows],
        }
    )
    params = pd.DataFrame([r.params for r, _, _ in rows], index=table.index)
    params = params.drop(columns=[c for c in params if c in table], errors="ignore")
    config = params[sorted(params.columns)].apply(numbers_where_numeric)
    return pd.concat([table, config], axis=1)


def matches(value: str | None, wanted: object) -> bool:
    """Whether a logged value (a string) is `wanted`: equal as text or as a number, one of a
    list, tuple or set, or accepted by a function."""
    if callable(wanted):
        return value is not None and bool(wanted(as_value(value)))
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return any(matches(value, w) for w in wanted)
    if value is None:
        return wanted is None
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return as_value(value) == wanted
    return value == str(wanted)


def where(study: Study, config: dict[str, object]) -> Study:
    """The study of the runs whose config has the values in `config` (keys as logged, such as
    `model`, `seed` or `optimizer.lr`), regrouped and aggregated again."""

    def keep(r: TrainRun) -> bool:
        logged = r.params | {"model": r.model, "seed": str(r.seed)}
        return all(matches(logged.get(k), v) for k, v in config.items())

    runs = [r for r in study.runs if keep(r)]
    if not runs:
        raise AnalysisError(f"none of the study's {len(study.runs)} runs has {config}")
    labels = group_labels(runs, frozenset())
    groups = order_groups(labels, runs)
    tidy = study.tidy[study.tidy["run"].isin(labels)].assign(model=lambda t: t["run"].map(labels))
    return replace(
        study,
        selection=f"{study.selection}, then {config}",
        runs=tuple(runs),
        left_out=tuple((r, why) for r, why in study.left_out if keep(r)),
        labels=labels,
        groups=groups,
        tidy=tidy.sort_values(["model", "seed", "metric", "pass"]).reset_index(drop=True),
        summary=aggregate(tidy, groups, study.errorbar),
    )
