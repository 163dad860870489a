"""One job in this process against a real SQLite store: a crash between a pass's checkpoint and
its logging, and the relaunch that mends it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import EPOCHS, config_args, history_of, runs_of, store_uri, untimed
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import hw3.tracking.job
from hw3.tracking.job import run_job

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # three runs: ~5 s


class StoreLost(ConnectionError):
    """The store went away in the middle of a call."""


def test_a_pass_checkpointed_but_not_logged_is_logged_once_by_the_resumed_run(
    compose_config, tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
):
    def config(experiment: str):
        args = config_args(tmp_path, tiny_root, experiment, f"trainer.epochs={EPOCHS}")
        return OmegaConf.to_object(compose_config(*args, "data.train_size=128"))

    log_values, lost = hw3.tracking.job.log_values, []

    def lose_pass_2(store, run_id, **values) -> None:
        if values.get("step") == 2 and values.get("metrics") and not lost:
            lost.append(values["metrics"])
            raise StoreLost("the store went away while pass 2 was logged")
        log_values(store, run_id, **values)

    monkeypatch.setattr(hw3.tracking.job, "log_values", lose_pass_2)
    with pytest.raises(StoreLost):
        run_job(config("crash"), overrides=[], hydra_dir=None)
    (crashed,) = runs_of(tmp_path, "crash")
    run_id = crashed.info.run_id
    assert crashed.info.status == "FAILED"
    assert crashed.data.tags["error"] == "the store went away while pass 2 was logged"
    assert [s for s, _ in history_of(tmp_path, run_id)["test/acc"]] == [1]
    (checkpoint,) = (tmp_path / "ckpt").rglob(f"{run_id}.pt")
    saved = torch.load(checkpoint, weights_only=True)["history"]
    assert saved[1] == lost[0]  # pass 2 was saved before its logging failed

    assert run_job(config("crash"), overrides=[], hydra_dir=None) == run_id
    run = MlflowClient(store_uri(tmp_path)).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert not {"error", "diverged", "diverged_pass"} & set(run.data.tags)
    history = history_of(tmp_path, run_id)
    for key, points in history.items():
        assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), key  # each pass once
    assert {k: points[1][1] for k, points in history.items()} == lost[0]

    assert run_job(config("straight"), overrides=[], hydra_dir=None) is not None
    (straight,) = runs_of(tmp_path, "straight")
    assert untimed(history) == untimed(history_of(tmp_path, straight.info.run_id))
