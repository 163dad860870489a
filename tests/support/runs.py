"""What the tests' runs are and log, and reading it back from a store through MLflow's client."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from hw3.engine.train import Measurement
from support.stores import store_uri

SMOOTHNESS_METRICS = {
    "smoothness/L",
    "smoothness/lr_max",
    "smoothness/u_norm",
    "smoothness/grad_norm",
    "smoothness/loss_range",
    "smoothness/grad_pred",
    "smoothness/beta",
}
# What a pass of the default configuration logs: fit, L̂ along one direction, times.
BASE_METRICS = {
    "train/loss",
    "train/loss_running",
    "train/acc",
    "test/loss",
    "test/acc",
    "time/train_pass_s",
    "time/smoothness_s",
    "time/eval_s",
}
METRICS = BASE_METRICS | SMOOTHNESS_METRICS
# The experiment's measurement, as conf/smoothness/default.yaml sets it: L̂ along one direction.
L_HAT = Measurement(
    directions=1,
    scales=(1.0,),
    sharpness=False,
    sharpness_examples=4096,
    sharpness_iters=20,
    sharpness_tol=1e-3,
)
EPOCHS = 3  # passes of the tests' CLI runs
CONFIGS = ["bn-seed0", "bn-seed1", "plain-seed0", "plain-seed1"]  # a plain,bn × seeds 0,1 sweep
PAIR_SWEEP = ["model=plain", "seed=0,1"]  # two jobs, where more would add nothing
PAIR = ["plain-seed0", "plain-seed1"]  # its runs
H = TypeVar("H", dict[str, list[tuple[int, float]]], list[dict[str, float]])


class Interrupt(Exception):
    """Raised by an `on_pass_end` callback to stop training between passes, as a kill would."""


def untimed(history: H) -> H:
    """A history without the wall-clock `time/*` metrics: what reruns reproduce bit for bit.

    Either a store's (`history_of`: metric → points) or the engine's (a dict of metrics per pass).
    """
    if isinstance(history, dict):
        return {k: v for k, v in history.items() if not k.startswith("time/")}
    return [untimed(metrics) for metrics in history]


def runs_in(where: Path | str, experiment: str, kind: str = "train") -> list[Run]:
    """The runs of `kind` (train, sweep, launch) in `experiment` of the store at `where` (none
    while the store or the experiment does not exist).

    A SQLite store that is not there yet is not created: a process under test may be creating
    it, and MLflow migrating one file from two processes breaks it."""
    if isinstance(where, Path) and not (where / "mlflow.db").exists():
        return []
    client = MlflowClient(store_uri(where))
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


def history_of(where: Path | str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of run `run_id` as its sorted (step, value) points."""
    client = MlflowClient(store_uri(where))
    keys = client.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys
    }


def logged_passes(where: Path | str, run_id: str) -> list[int]:
    """The passes run `run_id` has logged (steps of test/acc, the last metric of a pass)."""
    client = MlflowClient(store_uri(where))
    return sorted(m.step for m in client.get_metric_history(run_id, "test/acc"))


def assert_complete(
    where: Path | str, experiment: str, names: list[str] = CONFIGS
) -> dict[str, Run]:
    """The sweep's runs (`names`), FINISHED under its one FINISHED parent, every metric logged at
    passes 1..EPOCHS exactly once, and nothing in the Default experiment; by run name."""
    (parent,) = runs_in(where, experiment, kind="sweep")
    assert parent.info.status == "FINISHED"
    runs = runs_in(where, experiment)
    assert sorted(r.info.run_name for r in runs) == names
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = history_of(where, run.info.run_id)
        assert set(history) == METRICS
        for key, points in history.items():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), (run.info.run_name, key)
    assert MlflowClient(store_uri(where)).search_runs(["0"]) == []
    return {r.info.run_name: r for r in runs}
