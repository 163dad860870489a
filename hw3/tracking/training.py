"""A job that trains: its run while it trains (`Job`), and the training of opened jobs.

hw3.tracking.job imports this module only once a job is to train: torch and the engine cost
seconds to import, which a job that is skipped never pays. Opened jobs of one dataset and device
can also train together in one process (`train_jobs`, hw3.tracking.group): each still goes
through its own run's steps, as a job trained alone does.
"""

from __future__ import annotations

import logging
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from hw3.engine.data import FashionMNIST, read_fashion_mnist
from hw3.engine.device import DeviceError, resolve_device
from hw3.engine.files import OFFICIAL_MD5, DataError, DatasetFiles
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
from hw3.tracking.job import RunFailed, Sweep, job_name, store_failure, store_reason
from hw3.tracking.schema import PLACE_KEYS, Config, flatten
from hw3.tracking.store import Store, log_dataset, log_values, logged_steps, redact

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
        cfg: Config,
        store: Store,
        sweep: Sweep,
        run_id: str,
        files: DatasetFiles,
        checkpoint: Path,
        claim: Claim,
        hydra_dir: Path | None,
    ) -> None:
        self.cfg, self.store, self.sweep, self.run_id = cfg, store, sweep, run_id
        self.files, self.checkpoint, self.hydra_dir = files, checkpoint, hydra_dir
        self.name = job_name(cfg)
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

    def conclude(self, outcome: list[Metrics] | Diverged) -> RunFailed | None:
        """End the run by how its training ended: FINISHED (also a divergence with
        trainer.on_divergence=stop), else FAILED, returning its one-line failure. Ending it is
        this run's own affair: if that fails (its artifacts, the store), it alone fails."""
        try:
            if not isinstance(outcome, Diverged):
                self.finish()
                return None
            if self.cfg.trainer.on_divergence == "stop":
                log.info("%s: %s; stopped (trainer.on_divergence=stop)", self.name, outcome)
                self.finish(diverged=outcome)
                return None
            self.fail(outcome)
            return RunFailed(f"{self.name} FAILED: {outcome}")
        except MlflowException as err:
            self.fail(err)
            return store_failure(self.name, self.store, err)
        except Exception as err:  # its traceback goes to the run's error.txt
            self.fail(err)
            return RunFailed(
                f"{self.name} FAILED as its run was ended ({str(err).splitlines()[0]}); its "
                "passes are logged and its checkpoint kept: relaunch to end it"
            )

    def run(self) -> None:
        """Train into the run, then end it FINISHED; or FAILED, raising its one-line RunFailed."""
        (failure,) = train_jobs([self])
        if failure is not None:
            raise failure

    def finish(self, diverged: Diverged | None = None) -> None:
        """Log the artifacts and end the run FINISHED (tagged diverged if it stopped so)."""
        if diverged is not None:
            tags = {"diverged": "true", "diverged_pass": diverged.epoch}
            log_values(self.store, self.run_id, tags=tags)
        self._log_artifacts()
        self.store.client.set_terminated(self.run_id, "FINISHED")
        self.checkpoint.unlink(missing_ok=True)

    def fail(self, err: BaseException) -> None:
        """End the run FAILED (KILLED for Ctrl-C) with its error as a tag and error.txt; if the
        store cannot be told, say so and leave the run for the relaunch (never mask `err`)."""
        tags = {"error": str(err).splitlines()[0][:4000] if str(err) else type(err).__name__}
        if isinstance(err, Diverged):
            tags |= {"diverged": "true", "diverged_pass": err.epoch}
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            log_values(self.store, self.run_id, tags=tags)
            self.store.client.log_text(
                self.run_id, "".join(traceback.format_exception(err)), "error.txt"
            )
            self.store.client.set_terminated(self.run_id, status)
        except MlflowException as store_err:
            why = store_reason(store_err)
            log.warning("%s: run %s not marked %s (%s)", self.name, self.run_id, status, why)

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


def train_jobs(jobs: Sequence[Job]) -> list[RunFailed | None]:
    """Start the jobs' runs, read their data once, train them together and end each run; per
    job None (FINISHED) or its one-line failure (FAILED). The jobs share the data config and
    trainer.device, trainer.deterministic and trainer.batch_size (hw3.tracking.group).

    An error outside every run's training (Ctrl-C, a store gone) ends every run FAILED (KILLED
    for Ctrl-C) and is raised: each resumes from its last pass when the job is launched again.
    """
    cfg = jobs[0].cfg
    try:
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
        outcomes = train_group(
            data,
            [job.member() for job in jobs],
            device=device.type,
            deterministic=cfg.trainer.deterministic,
        )
    except (DataError, DeviceError) as err:
        for job in jobs:
            job.fail(err)
        return [RunFailed(f"{job.name} FAILED: {str(err).splitlines()[0]}") for job in jobs]
    except MlflowException as err:  # the store, gone for longer than MLflow's retries
        for job in jobs:
            job.fail(err)
        return [store_failure(job.name, job.store, err) for job in jobs]
    except BaseException as err:
        for job in jobs:
            job.fail(err)
        raise
    return [job.conclude(outcome) for job, outcome in zip(jobs, outcomes, strict=True)]
