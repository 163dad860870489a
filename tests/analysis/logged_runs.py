"""Synthetic training and sweep runs with known values, logged as run.py logs them."""

from __future__ import annotations

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from hw3.analysis.intervals import ErrorBar
from hw3.analysis.job import Settings

EXPERIMENT = "exp"
REFERENCE = "ref"  # the experiment that settings() takes the stability reference from
PASSES = 3
LR = 0.04
# Final-pass test accuracy per model and seed 0, 1, 2; earlier passes are 0.1 lower per pass.
FINAL_ACC = {"plain": [0.80, 0.82, 0.87], "bn": [0.84, 0.85, 0.86], "stride": [0.78, 0.79, 0.83]}
# L̂ per pass (plus the seed): bn is below plain at passes 2 and 3 only.
SMOOTHNESS = {"plain": [10.0, 10.0, 10.0], "bn": [12.0, 8.0, 8.0], "stride": [11.0, 11.0, 11.0]}


def settings(errorbar: str, *, resamples: int = 1000, seed: int = 0) -> Settings:
    """Analysis settings with `errorbar`, a 95% level and REFERENCE at η = LR."""
    return Settings(ErrorBar(errorbar, 0.95, resamples, seed), (REFERENCE,), LR, ("png", "pdf"))


def history(model: str, seed: int, *, smoothness: bool = True) -> dict[str, list[float]]:
    """Per-pass values of one synthetic run, all known in closed form."""
    acc = [FINAL_ACC[model][seed] - 0.1 * (PASSES - p) for p in range(1, PASSES + 1)]
    out = {
        "train/loss": [1.0 - a for a in acc],
        "test/loss": [1.2 - a for a in acc],
        "train/acc": [a + 0.05 for a in acc],
        "test/acc": acc,
        "time/train_pass_s": [1.0 + seed] * PASSES,
    }
    if smoothness:
        out["smoothness/L"] = [v + seed for v in SMOOTHNESS[model]]
        out["smoothness/lr_max"] = [1 / (v + seed) for v in SMOOTHNESS[model]]
    return out


def log_run(
    client: MlflowClient,
    exp: str,
    model: str,
    seed: int,
    *,
    status: str = "FINISHED",
    values: dict[str, list[float]] | None = None,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    start_time: int | None = None,
) -> str:
    """A training run as run.py logs it: tags, flattened params, one point per pass."""
    run_id = client.create_run(exp, start_time, run_name=f"{model}-seed{seed}").info.run_id
    values = history(model, seed) if values is None else values
    base = {"model.name": model, "seed": str(seed), "optimizer.lr": str(LR), "trainer.epochs": "3"}
    all_tags = {"kind": "train", "model": model, "seed": str(seed), "fingerprint": f"{model}{seed}"}
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, v, 1000 * p, p) for k, vs in values.items() for p, v in enumerate(vs, 1)
        ],
        params=[Param(k, v) for k, v in (base | (params or {})).items()],
        tags=[RunTag(k, v) for k, v in (all_tags | (tags or {})).items()],
    )
    client.set_terminated(run_id, status)
    return run_id


def log_grid(client: MlflowClient, exp: str, models: tuple[str, ...], n_seeds: int = 3) -> None:
    """FINISHED runs of `models` × seeds 0..n_seeds-1."""
    for model in models:
        for seed in range(n_seeds):
            log_run(client, exp, model, seed)


def log_sweep(client: MlflowClient, exp: str, sweep_id: str, jobs: list[str]) -> str:
    """A sweep's parent run naming the run of each job it asked for (tags job.<fingerprint>),
    with its launch nested under it as run.py logs it (a run without metrics, kind=launch)."""
    tags = {"kind": "sweep", "sweep_id": sweep_id} | {f"job.fp{i}": r for i, r in enumerate(jobs)}
    run_id = client.create_run(exp, run_name=f"sweep-{sweep_id[:8]}", tags=tags).info.run_id
    launch = {"kind": "launch", "sweep_id": sweep_id, "mlflow.parentRunId": run_id}
    client.set_terminated(client.create_run(exp, tags=launch).info.run_id, "FINISHED")
    client.set_terminated(run_id, "FINISHED")
    return run_id
