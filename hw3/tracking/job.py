"""One job: a validated config → its MLflow run found, and skipped, resumed, restarted or started.

A job's run is found by its fingerprint: what the config asks to compute, the engine's code
version and the data's digest. The job looks at every run of its configuration and does what
hw3.tracking.relaunch decides: skip, resume in place, restart openly, or start a new run. While
a job trains, it holds a claim on its configuration and its run carries a heartbeat
(hw3.tracking.claim).

Deciding takes no torch and reads no data (the data's digest comes from the files' cached
MD5s): a relaunch that skips every job pays for neither. A job that trains goes on in
hw3.tracking.training, imported only then.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from hw3.engine.files import SYSTEM_DIR, DataError, DatasetFiles, locate
from hw3.engine.version import engine_version
from hw3.tracking.claim import Claim, holder_tags, live_holder, now_ms
from hw3.tracking.relaunch import REPLACED_TAGS, Action, Do, Found, decide
from hw3.tracking.schema import PLACE_KEYS, Config, ConfigError, flatten, resolve_path, validate
from hw3.tracking.store import (
    ENV_EXPERIMENT,
    ENV_EXPERIMENT_ID,
    ENV_PARENT,
    ENV_SWEEP,
    Store,
    TrackingError,
    checkpoint_folder,
    connect,
    experiment_id,
    find_runs,
    fingerprint,
    git_state,
    log_values,
    logged_steps,
    redact,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hw3.tracking.training import Job

log = logging.getLogger("hw3")

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


def job_name(cfg: Config) -> str:
    """The job's MLflow run name, as its log lines call it: `<model>-seed<seed>`."""
    return f"{cfg.model.name}-seed{cfg.seed}"


def store_reason(err: MlflowException) -> str:
    """What MLflow said when the store stopped answering, in one short line."""
    return str(err.message).splitlines()[0][:300]


def store_failure(name: str, store: Store, err: MlflowException) -> RunFailed:
    """The one-line failure of a job whose tracking store stopped answering (past MLflow's
    retries): the run could not be told, so it is left for the relaunch to resume."""
    return RunFailed(
        f"{name} stopped: the tracking store {redact(store.uri)} did not answer "
        f"({store_reason(err)}); "
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
    folder = checkpoint_folder(cfg.trainer.checkpoint_dir, store, experiment)
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
        # The job trains: only now torch and the engine are imported (seconds), after its log line.
        from hw3.tracking.training import Job

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
    """The tags that the job's run gets, new or resumed: what it computes, by whom, where
    (what it trains with, the device and torch, hw3.tracking.training adds)."""
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
    # Only a run that may be continued needs torch: its checkpoint is read.
    from hw3.engine.train import CheckpointError, read_checkpoint

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
