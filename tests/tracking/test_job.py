"""One job in this process against a real SQLite store: a crash between a pass's checkpoint and
its logging and the relaunch that mends it, and what a job leaves when it cannot go on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from support.cli import config_args, override
from support.runs import EPOCHS, history_of, runs_in, untimed
from support.stores import store_uri

import hw3.tracking.store
import hw3.tracking.training
from hw3.engine.files import raw_dir
from hw3.tracking.claim import Claim
from hw3.tracking.job import JobSpec, Outcome, run_jobs
from hw3.tracking.store import connect, experiment_id, local_folder
from hw3.tracking.sweep import ENV_EXPERIMENT, ENV_EXPERIMENT_ID, ENV_PARENT, ENV_SWEEP

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # a few s each


def run_job(cfg) -> Outcome:
    """Run one job as run.py does; its outcome."""
    (outcome,) = run_jobs([JobSpec(cfg, [], None)])
    return outcome


class StoreLost(ConnectionError):
    """The store went away in the middle of a call."""


def lose_the_logging_of_pass(n: int, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Make the store go away, once, while a job logs its pass `n`: the pass's metrics (saved in
    its checkpoint before) are put in the list returned."""
    log_values, lost = hw3.tracking.training.log_values, []

    def lose_pass(store, run_id, **values) -> None:
        if values.get("step") == n and values.get("metrics") and not lost:
            lost.append(values["metrics"])
            raise StoreLost(f"the store went away while pass {n} was logged")
        log_values(store, run_id, **values)

    monkeypatch.setattr(hw3.tracking.training, "log_values", lose_pass)
    return lost


def test_checkpoints_live_beside_the_store_and_those_in_the_old_place_still_resume(
    compose_config, tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
):
    old_root = tmp_path / "project" / "outputs" / "checkpoints"
    monkeypatch.setattr(hw3.tracking.store, "OLD_CHECKPOINTS", old_root)
    args = config_args(tmp_path, tiny_root, "moved", f"trainer.epochs={EPOCHS}")
    args = override(args, "trainer.checkpoint_dir", "null")  # the default
    cfg = OmegaConf.to_object(compose_config(*args, "data.train_size=128"))

    lose_the_logging_of_pass(2, monkeypatch)
    assert run_job(cfg).status == "FAILED"
    (crashed,) = runs_in(tmp_path, "moved")
    run_id, experiment = crashed.info.run_id, crashed.info.experiment_id
    beside = tmp_path / "mlflow.db-checkpoints" / experiment
    assert (beside / f"{run_id}.pt").is_file()  # beside the store, named by experiment and run

    # Where an earlier version kept it: outputs/checkpoints/<12-hex of the store>/<experiment>.
    old = local_folder(old_root, connect(store_uri(tmp_path)), experiment)
    old.parent.mkdir(parents=True)
    beside.rename(old)
    assert run_job(cfg) == Outcome("plain-seed0", "FINISHED")
    assert [r.info.run_id for r in runs_in(tmp_path, "moved")] == [run_id]  # resumed in place
    run = MlflowClient(store_uri(tmp_path)).get_run(run_id)
    assert run.info.status == "FINISHED"
    for key, points in history_of(tmp_path, run_id).items():
        assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), key  # each pass once
    assert not any(old.iterdir())


def test_a_pass_checkpointed_but_not_logged_is_logged_once_by_the_resumed_run(
    compose_config, tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
):
    def config(experiment: str):
        args = config_args(tmp_path, tiny_root, experiment, f"trainer.epochs={EPOCHS}")
        return OmegaConf.to_object(compose_config(*args, "data.train_size=128"))

    lost = lose_the_logging_of_pass(2, monkeypatch)
    failed = run_job(config("crash"))
    assert failed == Outcome(
        "plain-seed0", "FAILED", "plain-seed0 FAILED: the store went away while pass 2 was logged"
    )
    (crashed,) = runs_in(tmp_path, "crash")
    run_id = crashed.info.run_id
    assert crashed.info.status == "FAILED"
    assert crashed.data.tags["error"] == "the store went away while pass 2 was logged"
    assert [s for s, _ in history_of(tmp_path, run_id)["test/acc"]] == [1]
    (checkpoint,) = (tmp_path / "ckpt").rglob(f"{run_id}.pt")
    saved = torch.load(checkpoint, weights_only=True)["history"]
    assert saved[1] == lost[0]  # pass 2 was saved before its logging failed

    assert run_job(config("crash")) == Outcome("plain-seed0", "FINISHED")
    assert [r.info.run_id for r in runs_in(tmp_path, "crash")] == [run_id]  # resumed in place
    run = MlflowClient(store_uri(tmp_path)).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert not {"error", "diverged", "diverged_pass"} & set(run.data.tags)
    history = history_of(tmp_path, run_id)
    for key, points in history.items():
        assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), key  # each pass once
    assert {k: points[1][1] for k, points in history.items()} == lost[0]

    assert run_job(config("straight")).status == "FINISHED"
    (straight,) = runs_in(tmp_path, "straight")
    assert untimed(history) == untimed(history_of(tmp_path, straight.info.run_id))


def test_a_pass_checkpointed_on_other_data_is_never_continued(
    compose_config, tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
):
    other = tmp_path / "other"  # the same files but one test label: other data
    shutil.copytree(tiny_root, other)
    labels = raw_dir(other) / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10
    labels.write_bytes(bytes(data))

    def config(root: Path):
        args = config_args(tmp_path, root, "other", "trainer.epochs=2", "data.train_size=128")
        return OmegaConf.to_object(compose_config(*args))

    lose_the_logging_of_pass(1, monkeypatch)
    assert run_job(config(tiny_root)).status == "FAILED"
    (crashed,) = runs_in(tmp_path, "other")
    assert crashed.info.status == "FAILED" and "test/acc" not in crashed.data.metrics
    assert list((tmp_path / "ckpt").rglob(f"{crashed.info.run_id}.pt"))  # pass 1, not logged

    assert run_job(config(other)).status == "FINISHED"
    runs = {r.info.run_id: r for r in runs_in(tmp_path, "other")}
    old = runs.pop(crashed.info.run_id)
    (run_id,) = runs
    assert old.data.tags["superseded"].startswith("dataset_digest ")
    assert old.data.tags["dataset_digest"] == crashed.data.tags["dataset_digest"]
    assert runs[run_id].info.status == "FINISHED"
    assert runs[run_id].data.tags["dataset_digest"] != old.data.tags["dataset_digest"]
    assert [s for s, _ in history_of(tmp_path, run_id)["test/acc"]] == [1, 2]


def test_a_job_that_cannot_record_itself_on_its_sweep_holds_nothing(
    compose_config, tmp_path: Path, tiny_root: Path, monkeypatch: pytest.MonkeyPatch
):
    args = config_args(tmp_path, tiny_root, "orphan", "trainer.epochs=1", "data.train_size=64")
    cfg = OmegaConf.to_object(compose_config(*args))
    store = connect(store_uri(tmp_path))
    experiment = experiment_id(store, "orphan")
    parent = store.client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    store.client.delete_run(parent)  # say, from the UI while its sweep runs: it takes no tags
    sweep = {ENV_EXPERIMENT: "orphan", ENV_EXPERIMENT_ID: experiment, ENV_PARENT: parent}
    for key, value in (sweep | {ENV_SWEEP: "s"}).items():
        monkeypatch.setenv(key, value)
    # Kept, as a sweep keeps a job's outcome.
    failed = run_job(cfg)
    assert failed.status == "FAILED" and failed.line.startswith("plain-seed0 stopped: ")
    (run,) = runs_in(tmp_path, "orphan")
    assert run.info.status == "FAILED"  # not left RUNNING by this live process
    (lock,) = (tmp_path / "ckpt").rglob("*.lock")
    claim = Claim.take(lock)
    assert isinstance(claim, Claim), claim  # nobody holds the configuration
    claim.release()

    for key in (*sweep, ENV_SWEEP):
        monkeypatch.delenv(key)
    assert run_job(cfg) == Outcome("plain-seed0", "FINISHED")
    assert [r.info.run_id for r in runs_in(tmp_path, "orphan")] == [run.info.run_id]
    assert MlflowClient(store_uri(tmp_path)).get_run(run.info.run_id).info.status == "FINISHED"
