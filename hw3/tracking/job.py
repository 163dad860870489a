"""One job: a validated config → one training run → one MLflow run that resumes and never lies.

A job's run is found by its fingerprint: what the config asks to compute, the engine's code
version and the data's digest. The job looks at every run of its configuration and does what
hw3.tracking.relaunch decides: skip, resume in place, restart openly, or start a new run. While
a job trains, it holds a claim on its configuration and its run carries a heartbeat
(hw3.tracking.claim).

Opened jobs of one dataset and device can also train together in one process (`train_jobs`,
hw3.tracking.group): each still goes through its own run's steps, as a job trained alone does.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from hw3.engine.data import (
    OFFICIAL_MD5,
    SYSTEM_DIR,
    DataError,
    DatasetFiles,
    FashionMNIST,
    locate,
    read_fashion_mnist,
)
from hw3.engine.device import DeviceError, resolve_device
from hw3.engine.train import (
    CheckpointError,
    Diverged,
    Measurement,
    Member,
    Metrics,
    Settings,
    read_checkpoint,
    train_group,
)
from hw3.engine.version import engine_version
from hw3.tracking.claim import Claim, Heartbeat, holder_tags, live_holder, now_ms
from hw3.tracking.relaunch import REPLACED_TAGS, Action, Do, Found, decide
from hw3.tracking.schema import PLACE_KEYS, Config, ConfigError, flatten, resolve_path, validate
from hw3.tracking.store import (
    ENV_EXPERIMENT,
    ENV_EXPERIMENT_ID,
    ENV_PARENT,
    ENV_SWEEP,
    Store,
    TrackingError,
    connect,
    experiment_id,
    find_runs,
    fingerprint,
    git_state,
    local_folder,
    log_dataset,
    log_values,
    logged_steps,
    redact,
)

log = logging.getLogger("hw3")

NOT_LOGGED = ("tracking.uri", "force")  # the URI may carry credentials; force is per launch
PROGRESS = ("train/loss", "test/acc", "smoothness/L", "time/train_pass_s")
FAILURE_TAGS = ("error", "diverged", "diverged_pass")
# Group tags describe the launch that trains the run: one that trains it in a group sets them.
GROUP_TAGS = ("group_size", "group_pass_time")
CLEARED_ON_RESUME = FAILURE_TAGS + GROUP_TAGS


@dataclass(frozen=True)
class JobSpec:
    """One job as Hydra hands it to run.py: its typed config, overrides and Hydra folder."""

    cfg: Config
    overrides: list[str]
    hydra_dir: Path | None

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> JobSpec:
        """The job Hydra is running now, with `cfg` its composed config."""
        hydra_cfg = HydraConfig.get()
        return cls(
            cfg=OmegaConf.to_object(cfg),
            overrides=list(hydra_cfg.overrides.task),
            hydra_dir=Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir,
        )


class RunFailed(RuntimeError):
    """A job failed for a reason its one-line message explains (the run is marked FAILED)."""


@dataclass(frozen=True)
class Sweep:
    """What the launching process of a sweep hands its jobs (all None for a single run)."""

    experiment_id: str | None = None
    parent_run_id: str | None = None
    sweep_id: str | None = None

    @classmethod
    def from_env(cls, experiment: str) -> Sweep:
        """The sweep this process belongs to, if it was launched for `experiment`."""
        if os.environ.get(ENV_EXPERIMENT) != experiment:
            return cls()
        return cls(
            os.environ.get(ENV_EXPERIMENT_ID),
            os.environ.get(ENV_PARENT),
            os.environ.get(ENV_SWEEP),
        )


def experiment_values(cfg: Config) -> dict[str, Any]:
    """The config's keys that define what is computed (all but schema.PLACE_KEYS)."""
    return {k: v for k, v in flatten(cfg).items() if k not in PLACE_KEYS}


def config_fingerprint(cfg: Config) -> str:
    """Hash of what the config asks to compute (not where it is stored, nor how fast)."""
    return fingerprint(experiment_values(cfg))


def run_fingerprint(cfg: Config, dataset_digest: str) -> str:
    """Hash of all that determines a run's results: the config, the engine's code, the data."""
    return fingerprint(
        {"config": config_fingerprint(cfg), "engine": engine_version(), "data": dataset_digest}
    )


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


def job_name(cfg: Config) -> str:
    """The job's MLflow run name, as its log lines call it: `<model>-seed<seed>`."""
    return f"{cfg.model.name}-seed{cfg.seed}"


def _dataset_name(cfg: Config) -> str:
    """'FashionMNIST', with the subset when one is used: the UI's Dataset column shows it."""
    sizes = {"train": cfg.data.train_size, "test": cfg.data.test_size}
    return " ".join(["FashionMNIST", *(f"{s}[:{n}]" for s, n in sizes.items() if n is not None)])


def _store_reason(err: MlflowException) -> str:
    """What MLflow said when the store stopped answering, in one short line."""
    return str(err.message).splitlines()[0][:300]


def store_failure(name: str, store: Store, err: MlflowException) -> RunFailed:
    """The one-line failure of a job whose tracking store stopped answering (past MLflow's
    retries): the run could not be told, so it is left for the relaunch to resume."""
    return RunFailed(
        f"{name} stopped: the tracking store {redact(store.uri)} did not answer "
        f"({_store_reason(err)}); "
        "relaunch the same command once it does: the run resumes from its last pass"
    )


def _record_on_parent(store: Store, sweep: Sweep, fp: str, run_id: str, *, training: bool) -> None:
    """List the job in its sweep's parent run (run or skipped), so the sweep can be analysed;
    a job that trains keeps the parent RUNNING (another copy of the sweep may have closed it)."""
    if sweep.parent_run_id is None:
        return
    log_values(store, sweep.parent_run_id, tags={f"job.{fp}": run_id})
    if training:
        store.client.update_run(sweep.parent_run_id, status="RUNNING")


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
            why = _store_reason(store_err)
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
        tags = {"device": device.type}
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


def open_job(cfg: Config, *, overrides: list[str], hydra_dir: Path | None) -> Job | None:
    """Claim `cfg`'s run (new, resumed or restarted); None if it is done or trained elsewhere."""
    name = job_name(cfg)
    try:
        validate(cfg)
        sweep = Sweep.from_env(cfg.tracking.experiment)
        # The sweep's launcher checked the store; its jobs ride out a server restart on retries.
        store = connect(cfg.tracking.uri, probe=sweep.parent_run_id is None)
        experiment = sweep.experiment_id or experiment_id(store, cfg.tracking.experiment)
        files = locate(
            resolve_path(cfg.data.root), system_dir=SYSTEM_DIR, download=cfg.data.download
        )
    except (ConfigError, TrackingError) as err:
        raise RunFailed(str(err).splitlines()[0]) from err
    except DataError as err:
        raise RunFailed(f"{name}: {str(err).splitlines()[0]}") from err
    try:
        return _claim_run(cfg, store, sweep, experiment, files, overrides, hydra_dir)
    except MlflowException as err:
        raise store_failure(name, store, err) from err


def _claim_run(
    cfg: Config,
    store: Store,
    sweep: Sweep,
    experiment: str,
    files: DatasetFiles,
    overrides: list[str],
    hydra_dir: Path | None,
) -> Job | None:
    """`open_job` once the store, the experiment and the data files are known."""
    name = job_name(cfg)
    fp, config_fp = run_fingerprint(cfg, files.digest), config_fingerprint(cfg)
    folder = local_folder(resolve_path(cfg.trainer.checkpoint_dir), store, experiment)
    # One claim per configuration, not per run fingerprint: a job acts on every run of its
    # configuration (a run resumed on repaired data takes the new fingerprint, runs of other
    # engine code or data are superseded), so no other process may act on any of them meanwhile.
    claim = Claim.take(folder / f"{config_fp}.lock")
    if isinstance(claim, str):
        runs = find_runs(store, experiment, kind="train", config_fingerprint=config_fp)
        run_id = next((r.info.run_id for r in runs if r.info.status == "RUNNING"), None)
        log.info("skip %s: run %s is being trained by %s", name, run_id or "(new)", claim)
        if run_id is not None:
            _record_on_parent(store, sweep, fp, run_id, training=False)
        return None
    with ExitStack() as unless_trained:  # the claim goes with the Job, else it is released
        unless_trained.callback(claim.release)
        runs = find_runs(store, experiment, kind="train", config_fingerprint=config_fp)
        found = [_found(store, run, folder, cfg.tracking.stale_after_s) for run in runs]
        action = decide(
            found, engine_version=engine_version(), dataset_digest=files.digest, force=cfg.force
        )
        if not action.trains:
            log.info("skip %s: %s", name, action.reason)
            _record_on_parent(store, sweep, fp, action.run.run_id, training=False)
            return None
        tags = _run_tags(cfg, files, sweep, overrides)
        run_id = _carry_out(action, store, experiment, runs, tags, folder)
        job = Job(cfg, store, sweep, run_id, files, folder / f"{run_id}.pt", claim, hydra_dir)
        try:
            _record_on_parent(store, sweep, fp, run_id, training=True)
        except BaseException as err:
            job.fail(err)
            raise
        unless_trained.pop_all()
        return job


def _run_tags(
    cfg: Config, files: DatasetFiles, sweep: Sweep, overrides: list[str]
) -> dict[str, str]:
    """The tags that the job's run gets, new or resumed: what it computes, by whom, where."""
    tags = {
        "mlflow.runName": job_name(cfg),
        "kind": "train",
        "model": cfg.model.name,
        "seed": str(cfg.seed),
        "fingerprint": run_fingerprint(cfg, files.digest),
        "config_fingerprint": config_fingerprint(cfg),
        "engine_version": engine_version(),
        "dataset_digest": files.digest,
        "overrides": redact(" ".join(overrides)),
        "torch_version": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),  # CPU results differ in the last bits by it
        **git_state(),
        **holder_tags(),
        "heartbeat": str(now_ms()),
    }
    if sweep.parent_run_id is not None:
        tags |= {"mlflow.parentRunId": sweep.parent_run_id, "sweep_id": sweep.sweep_id}
    return tags


def _found(store: Store, run: Run, folder: Path, stale_after_s: float) -> Found:
    """A run of the job's configuration as `decide` sees it: its passes and checkpoint are
    looked at only when it could be continued."""
    tags, status = run.data.tags, run.info.status
    found = Found(
        run.info.run_id,
        status,
        engine_version=tags.get("engine_version", "?"),
        dataset_digest=tags.get("dataset_digest", "?"),
        live=live_holder(tags, status, stale_after_s=stale_after_s),
        replaced=any(key in tags for key in REPLACED_TAGS),
    )
    if not found.may_continue:
        return found
    checkpoint = folder / f"{run.info.run_id}.pt"
    state, error = "readable", ""
    if not checkpoint.is_file():
        state = "absent"
    else:
        try:
            read_checkpoint(checkpoint)
        except CheckpointError as err:
            state, error = "unreadable", str(err)
    passes = len(logged_steps(store, run.info.run_id, "test/acc"))
    return replace(found, passes=passes, checkpoint=state, checkpoint_error=error)


def _carry_out(
    action: Action,
    store: Store,
    experiment: str,
    runs: Sequence[Run],
    tags: dict[str, str],
    folder: Path,
) -> str:
    """Do what `action` says (a training one) with the configuration's `runs`; the id of the
    run to train into. `tags` are the job's run's."""
    name = tags["mlflow.runName"]
    for old in action.supersede:
        log.info("not resuming run %s of %s: %s", old.run.run_id, name, old.why)
        log_values(store, old.run.run_id, tags={"superseded": old.why})
        if old.run.status == "RUNNING":
            store.client.set_terminated(old.run.run_id, "KILLED")
    if action.run is None:
        run_id = store.client.create_run(experiment, tags=tags, run_name=name).info.run_id
        log.info("start %s: new run %s (%s)", name, run_id, action.reason)
        return run_id
    old = action.run
    if action.do == Do.RESTART:
        new = store.client.create_run(experiment, tags=tags | {"restarted_from": old.run_id})
        why = f"{action.reason}; restarted from pass 1 as run {new.info.run_id}"
        log_values(store, old.run_id, tags={"restarted_as": new.info.run_id, "error": why})
        if old.status == "RUNNING":
            store.client.set_terminated(old.run_id, "KILLED")
        log.warning("restart %s: %s", name, why)
        return new.info.run_id
    if action.discard_checkpoint:
        (folder / f"{old.run_id}.pt").unlink(missing_ok=True)
    (run,) = [r for r in runs if r.info.run_id == old.run_id]
    for key in CLEARED_ON_RESUME:
        if key in run.data.tags:
            store.client.delete_tag(old.run_id, key)
    log_values(store, old.run_id, tags=tags)  # this process holds it now; this sweep is its parent
    store.client.update_run(old.run_id, status="RUNNING")
    log.info("resume %s: %s", name, action.reason)
    return old.run_id


def run_job(cfg: Config, *, overrides: list[str], hydra_dir: Path | None) -> str | None:
    """Train per `cfg` into its MLflow run, as hw3.tracking.relaunch decides (skip, resume,
    restart or new); return the run id, or None if it was not trained here."""
    job = open_job(cfg, overrides=overrides, hydra_dir=hydra_dir)
    if job is None:
        return None
    try:
        job.run()
    finally:
        job.close()
    return job.run_id
