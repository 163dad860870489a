"""A job that trains: its run while it trains (`Job`), and the training of opened jobs.

hw3.tracking.job, which runs every job, imports this module only once a job is to train: torch
and the engine cost seconds to import, which a job that is skipped never pays. Opened jobs of one
dataset and device can train together in one process (`train_together`, hw3.tracking.group):
each still goes through its own run's steps, as a job trained alone does. Errors are raised as
they come: hw3.tracking.job turns each into the job's outcome.
"""

from __future__ import annotations

import logging
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hw3.engine.data import FashionMNIST, read_fashion_mnist
from hw3.engine.device import resolve_device
from hw3.engine.files import OFFICIAL_MD5, DatasetFiles
from hw3.engine.train import (
    Diverged,
    Measurement,
    Member,
    Metrics,
    Settings,
    read_checkpoint,
    train_group,
)
from hw3.tracking.claim import Claim, Heartbeat, now_ms
from hw3.tracking.reading import logged_steps
from hw3.tracking.record import log_dataset, log_values
from hw3.tracking.schema import PLACE_KEYS, Config, flatten
from hw3.tracking.store import Store, redact

log = logging.getLogger("hw3")

NOT_LOGGED = ("tracking.uri", "force")  # the URI may carry credentials; force is per launch
PROGRESS = ("train/loss", "test/acc", "smoothness/L", "time/train_pass_s")


def measurement(cfg: Config) -> Measurement | None:
    """What the engine measures after every pass (conf/smoothness), None when it is off."""
    s = cfg.smoothness
    if not s.enabled:
        return None
    return Measurement(
        directions=s.directions,
        scales=tuple(s.scales),
        sharpness=s.sharpness,
        sharpness_examples=s.sharpness_examples,
        sharpness_iters=s.sharpness_iters,
        sharpness_tol=s.sharpness_tol,
    )


def engine_settings(cfg: Config) -> Settings:
    """The config as one run of hw3.engine.train (but data, device and callbacks)."""
    return Settings(
        model=cfg.model.name,
        lr=cfg.optimizer.lr,
        momentum=cfg.optimizer.momentum,
        weight_decay=cfg.optimizer.weight_decay,
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        seed=cfg.seed,
        measure=measurement(cfg),
        chunk_size=cfg.trainer.chunk_size,
        cuda_graphs=cfg.trainer.cuda_graphs,
        model_params={k: v for k, v in flatten(cfg.model).items() if k != "name"},
    )


def read_data(cfg: Config, files: DatasetFiles) -> FashionMNIST:
    """The dataset's files read and preprocessed as the config says."""
    return read_fashion_mnist(
        files,
        normalize=cfg.data.normalize,
        mean=cfg.data.mean,
        std=cfg.data.std,
        train_size=cfg.data.train_size,
        test_size=cfg.data.test_size,
        checksums=OFFICIAL_MD5 if cfg.data.verify else None,
    )


def _dataset_name(cfg: Config) -> str:
    """'FashionMNIST', with the subset when one is used: the UI's Dataset column shows it."""
    sizes = {"train": cfg.data.train_size, "test": cfg.data.test_size}
    return " ".join(["FashionMNIST", *(f"{s}[:{n}]" for s, n in sizes.items() if n is not None)])


class Job:
    """One configuration's MLflow run, claimed by this process until `close`."""

    def __init__(
        self,
        name: str,
        cfg: Config,
        store: Store,
        run_id: str,
        files: DatasetFiles,
        checkpoint: Path,
        claim: Claim,
        hydra_dir: Path | None,
    ) -> None:
        self.name, self.cfg, self.store, self.run_id = name, cfg, store, run_id
        self.files, self.checkpoint, self.hydra_dir = files, checkpoint, hydra_dir
        self._claim = claim
        self._logged: set[int] = set()
        self._heartbeat = Heartbeat(self._beat, cfg.tracking.heartbeat_s)

    def _beat(self) -> None:
        log_values(self.store, self.run_id, tags={"heartbeat": now_ms()})

    def start(self) -> None:
        """Record what the run computes, where and how; then keep it marked alive."""
        values = {k: v for k, v in flatten(self.cfg).items() if k not in NOT_LOGGED}
        params = {k: v for k, v in values.items() if k not in PLACE_KEYS}
        # Where and how may differ when a run resumes: tags can change, params cannot.
        where_how = {k: v for k, v in values.items() if k in PLACE_KEYS}
        log_values(self.store, self.run_id, params=params, tags=where_how)
        self._logged = logged_steps(self.store, self.run_id, "test/acc")
        self._heartbeat.start()

    def log_dataset(self) -> None:
        """Record the data as the run's dataset input, once they were read and verified."""
        log_dataset(
            self.store,
            self.run_id,
            name=_dataset_name(self.cfg),
            digest=self.files.digest,
            source=self.files.raw,
            profile={
                "md5": self.files.md5,
                "train_size": self.cfg.data.train_size,
                "test_size": self.cfg.data.test_size,
            },
        )

    def on_pass_end(self, epoch: int, metrics: Metrics) -> None:
        """Log a finished pass, unless it was logged before a kill (a replay from a checkpoint)."""
        if epoch in self._logged:
            return
        log_values(self.store, self.run_id, metrics=metrics, step=epoch, timestamp_ms=now_ms())
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in PROGRESS if k in metrics)
        log.info("%s pass %d/%d: %s", self.name, epoch, self.cfg.trainer.epochs, shown)

    def member(self) -> Member:
        """The job as a member of hw3.engine.train.train_group: its passes go to its run."""
        return Member(engine_settings(self.cfg), self.on_pass_end, self.checkpoint)

    def finish(self, diverged: Diverged | None = None) -> None:
        """Log the artifacts and end the run FINISHED (tagged diverged if it stopped so)."""
        if diverged is not None:
            tags = {"diverged": "true", "diverged_pass": diverged.epoch}
            log_values(self.store, self.run_id, tags=tags)
        self._log_artifacts()
        self.store.client.set_terminated(self.run_id, "FINISHED")
        self.checkpoint.unlink(missing_ok=True)

    def end(self, status: str, tags: dict[str, Any], err: BaseException) -> None:
        """End the run unfinished: `status` (FAILED, KILLED), `tags` (its error), and what
        stopped it as error.txt (its traceback); the checkpoint is kept for the relaunch."""
        log_values(self.store, self.run_id, tags=tags)
        self.store.client.log_text(
            self.run_id, "".join(traceback.format_exception(err)), "error.txt"
        )
        self.store.client.set_terminated(self.run_id, status)

    def close(self) -> None:
        """Stop the heartbeat and give up the claim."""
        self._heartbeat.stop()
        self._claim.release()

    def _log_artifacts(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            if self.hydra_dir is not None and self.hydra_dir.is_dir():
                (Path(tmp) / ".hydra").mkdir()
                for src in self.hydra_dir.glob("*.yaml"):  # the URI may carry credentials
                    (Path(tmp) / ".hydra" / src.name).write_text(redact(src.read_text()))
                self.store.client.log_artifacts(self.run_id, str(Path(tmp) / ".hydra"), ".hydra")
            if not self.checkpoint.is_file():
                return  # diverged in its first pass: no weights worth keeping
            path = Path(tmp) / "state_dict.pt"
            torch.save(read_checkpoint(self.checkpoint)["model"], path)
            self.store.client.log_artifact(self.run_id, str(path), "model")


def train_together(jobs: Sequence[Job]) -> list[list[Metrics] | Diverged]:
    """Start the jobs' runs, read their data once and train them together; per job its metrics
    per pass or the Diverged that stopped it. The jobs share the data config and trainer.device,
    trainer.deterministic and trainer.batch_size (hw3.tracking.group)."""
    cfg = jobs[0].cfg
    for job in jobs:
        job.start()
    device = resolve_device(cfg.trainer.device)
    tags = {
        "device": device.type,
        "torch_version": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),  # CPU results differ in the last bits
    }
    if len(jobs) > 1:
        # On CUDA the members' steps run side by side: a pass is timed at the group's wall
        # time over the members training it; on CPU they train in turn, each timed alone.
        tags |= {"group_size": len(jobs)}
        tags |= {"group_pass_time": "shared" if device.type == "cuda" else "own"}
    for job in jobs:
        log_values(job.store, job.run_id, tags=tags)
    data = read_data(cfg, jobs[0].files)
    for job in jobs:
        job.log_dataset()
    return train_group(
        data,
        [job.member() for job in jobs],
        device=device.type,
        deterministic=cfg.trainer.deterministic,
    )
