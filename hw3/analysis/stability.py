"""Stability across learning rates: final loss and accuracy per rate, divergence, the largest
stable rate per model, and the L̂ that other experiments measured at a reference rate."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from mlflow.entities import Run

from hw3.analysis.study import (
    AnalysisError,
    Study,
    TrainRun,
    describe,
    existing_experiment,
    group_labels,
    newest_version,
    order_groups,
    search,
)
from hw3.tracking.store import Store

LR = "optimizer.lr"
UNIFORM_LOSS = math.log(10)  # cross-entropy of a uniform guess over the 10 classes
FINAL = {"train/loss": "train_loss", "test/acc": "test_acc"}  # metric → column of `runs`
REFERENCE_METRICS = {"smoothness/L": "L", "smoothness/sharpness": "sharpness"}


@dataclass(frozen=True)
class Reference:
    """Per model, L̂ and λ_max at their runs' final pass, measured at learning rate `lr` by
    the FINISHED, undiverged runs of other experiments (the newest engine version among them)."""

    lr: float
    searched: tuple[str, ...]  # the experiments asked for
    found: tuple[str, ...]  # those the store holds
    engine_version: str | None  # of the runs used; None if there are none
    table: pd.DataFrame  # index model; columns n, L, inv_L, sharpness, two_over_sharpness


@dataclass(frozen=True)
class Stability:
    """One study's runs across learning rates, per line (a model, with any other setting that
    splits its runs)."""

    lines: tuple[str, ...]
    runs: pd.DataFrame  # run, line, model, seed, lr, diverged_pass, train_loss, test_acc
    largest_stable: dict[str, float]  # line → largest stable rate (NaN: none)
    reference: Reference

    def model(self, line: str) -> str:
        """The model of a line."""
        return self.runs.loc[self.runs["line"] == line, "model"].iloc[0]

    def rates(self, line: str) -> pd.DataFrame:
        """Per rate tried on `line`, by rate: its runs and how many diverged (columns lr, runs,
        diverged)."""
        mine = self.runs[self.runs["line"] == line]
        return pd.DataFrame(
            [
                (lr, len(at), int(at["diverged_pass"].notna().sum()))
                for lr, at in mine.groupby("lr")
            ],
            columns=["lr", "runs", "diverged"],
        )


def applies(study: Study) -> bool:
    """Whether some model's selected runs differ in learning rate."""
    return any(
        len({r.params.get(LR) for r in study.runs if r.model == model}) > 1
        for model in {r.model for r in study.runs}
    )


def stable(runs: pd.DataFrame) -> bool:
    """No run diverged and every run's final training loss is below that of a uniform guess."""
    return bool(len(runs)) and bool((runs["train_loss"] < UNIFORM_LOSS).all())


def final_values(study: Study) -> pd.DataFrame:
    """Each run's value of the FINAL metrics at its last pass (NaN for diverged runs)."""
    rows = study.tidy[study.tidy["metric"].isin(FINAL)]
    last = rows.sort_values("pass").groupby(["run", "metric"]).tail(1)
    return last.pivot(index="run", columns="metric", values="value").rename(columns=FINAL)


def run_table(study: Study) -> pd.DataFrame:
    """One row per run: its line, model, seed, learning rate, divergence and final values."""
    lines = group_labels(study.runs, frozenset({LR}))
    finals = final_values(study).reindex([r.run_id for r in study.runs])
    table = pd.DataFrame(
        {
            "run": [r.run_id for r in study.runs],
            "line": [lines[r.run_id] for r in study.runs],
            "model": [r.model for r in study.runs],
            "seed": [r.seed for r in study.runs],
            "lr": [float(r.params.get(LR, "nan")) for r in study.runs],
            "diverged_pass": pd.array([r.diverged_pass for r in study.runs], dtype="Int64"),
        }
    )
    for column in FINAL.values():
        values = finals[column] if column in finals else pd.Series(math.nan, index=finals.index)
        table[column] = values.to_numpy()
    diverged = table["diverged_pass"].notna().to_numpy()
    table.loc[diverged, list(FINAL.values())] = math.nan
    return table


def largest_stable(table: pd.DataFrame, line: str) -> float:
    """The largest learning rate tried on `line` at which it was stable (NaN: none)."""
    rates = [lr for lr, at in table[table["line"] == line].groupby("lr") if stable(at)]
    return max(rates, default=math.nan)


def final_aggregates(stability: Stability, study: Study, column: str) -> pd.DataFrame:
    """Per line and rate, the statistics of `column` over the runs that did not diverge."""
    values = stability.runs.dropna(subset=[column]).rename(columns={column: "value"})
    return describe(values, ["line", "lr"], study.errorbar)


def load_reference(store: Store, experiments: Sequence[str], lr: float) -> Reference:
    """L̂ and λ_max at the final pass of the reference runs, aggregated per model."""
    ids = {}
    for name in experiments:
        with contextlib.suppress(AnalysisError):  # absent: the report says so
            ids[name] = existing_experiment(store, name)
    where = "tags.kind = 'train' and attributes.status = 'FINISHED'"
    runs = [(r, TrainRun.from_mlflow(r)) for i in ids.values() for r in search(store, i, where)]
    at_lr = [
        (r, t)
        for r, t in runs
        if not t.diverged and math.isclose(float(t.params.get(LR, "nan")), lr, rel_tol=1e-9)
    ]
    columns = ["n", "L", "inv_L", "sharpness", "two_over_sharpness"]
    if not at_lr:
        empty = pd.DataFrame(columns=columns, index=pd.Index([], name="model"), dtype=float)
        return Reference(lr, tuple(experiments), tuple(ids), None, empty)
    version = newest_version([t for _, t in at_lr])
    newest: dict[str, Run] = {}  # one run per configuration: the same one in two experiments
    for r, t in sorted(at_lr, key=lambda pair: pair[1].start_time, reverse=True):
        if t.engine_version == version:
            newest.setdefault(r.data.tags.get("fingerprint", t.run_id), r)
    rows = [
        {"model": r.data.tags["model"]}
        | {col: r.data.metrics.get(metric, math.nan) for metric, col in REFERENCE_METRICS.items()}
        for r in newest.values()
    ]
    table = (
        pd.DataFrame(rows)
        .groupby("model")
        .agg(n=("L", "count"), L=("L", "mean"), sharpness=("sharpness", "mean"))
    )
    table["inv_L"] = 1 / table["L"]
    table["two_over_sharpness"] = 2 / table["sharpness"]
    return Reference(lr, tuple(experiments), tuple(ids), version, table[columns])


def load_stability(
    store: Store, study: Study, reference_experiments: Sequence[str], reference_lr: float
) -> Stability | None:
    """The study's stability across learning rates; None if no model's runs differ in rate."""
    if not applies(study):
        return None
    table = run_table(study)
    lines = order_groups(dict(zip(table["run"], table["line"], strict=True)), study.runs)
    return Stability(
        lines=lines,
        runs=table,
        largest_stable={line: largest_stable(table, line) for line in lines},
        reference=load_reference(store, reference_experiments, reference_lr),
    )
