"""The one runner: every job, alone or in a group, from any launcher, is opened, trained and
ended here, top to bottom.

1. Open: its run is found by its fingerprint (what the config asks to compute, the engine's code
   version, the data's digest); the job claims its configuration (hw3.tracking.claim) and does
   what hw3.tracking.relaunch decides with the runs it finds: skip, resume in place, restart
   openly, or start a new run. Deciding takes no torch and reads no data (the data's digest
   comes from the files' cached MD5s): a relaunch that skips every job pays for neither.
2. Train: the opened jobs train together in hw3.tracking.training, imported only then.
3. End: each run ends FINISHED, or as `judge` says for what stopped it. `judge` is the one place
   an error becomes a job's outcome (its run's status, its `error` tag, its one line); the lower
   layers raise typed errors, and only the command line (run.py, the launchers) exits.

SIGTERM and SIGINT stop the jobs within seconds (hw3.tracking.stopping): their runs end KILLED,
to be resumed from their last pass.
"""

from __future__ import annotations

import logging
import signal
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
from hw3.tracking.errors import first_line
from hw3.tracking.provenance import fingerprint, git_state
from hw3.tracking.reading import find_runs, logged_steps
from hw3.tracking.record import log_values
from hw3.tracking.relaunch import REPLACED_TAGS, Action, Do, Found, decide
from hw3.tracking.schema import PLACE_KEYS, Config, ConfigError, flatten, resolve_path, validate
from hw3.tracking.stopping import REQUEUE_SIGNAL, Stopped, jobs_stop_at_once, received
from hw3.tracking.store import (
    Store,
    TrackingError,
    checkpoint_folder,
    connect,
    experiment_id,
    redact,
)
from hw3.tracking.sweep import Sweep

if TYPE_CHECKING:
    from collections.abc import Sequence

    from hw3.engine.train import Diverged, Metrics
    from hw3.tracking.training import Job

log = logging.getLogger("hw3")

FAILURE_TAGS = ("error", "diverged", "diverged_pass")
# Group tags describe the launch that trains the run: one that trains it in a group sets them.
GROUP_TAGS = ("group_size", "group_pass_time")
CLEARED_ON_RESUME = FAILURE_TAGS + GROUP_TAGS
RESUMES = "relaunch the same command: the run resumes from its last pass"


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

    @property
    def name(self) -> str:
        """The job's MLflow run name, as its log lines call it: `<model>-seed<seed>`."""
        return f"{self.cfg.model.name}-seed{self.cfg.seed}"


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its run's status (SKIPPED: not trained here) and, unless it FINISHED or
    was skipped, the one line that says why and what to do."""

    name: str
    status: str
    line: str | None = None


def run_jobs(specs: Sequence[JobSpec]) -> list[Outcome]:
    """Open each job, train the opened ones together and end each; per job its outcome.

    Errors that are not a job's own (a bug) end its run FAILED and become its outcome too; only
    submitit's requeue (SystemExit) is raised on, once the runs are ended.
    """
    outcomes: dict[int, Outcome] = {}
    opened: dict[int, Job] = {}
    with jobs_stop_at_once(), ExitStack() as closing:
        for i, spec in enumerate(specs):
            try:
                if (stop := received()) is not None:
                    raise stop
                job = open_job(spec)
            except Stopped as stop:
                outcomes[i] = Outcome(spec.name, "SKIPPED", f"{spec.name} not started: {stop}")
                continue
            if isinstance(job, Outcome):
                outcomes[i] = job
            else:
                closing.callback(job.close)
                opened[i] = job
        if opened:
            outcomes |= zip(opened, _train(list(opened.values())), strict=True)
    return [outcomes[i] for i in range(len(specs))]


def _train(jobs: Sequence[Job]) -> list[Outcome]:
    """Train the opened jobs together and end each run: FINISHED, or as `judge` says."""
    # Imported only here: torch and the engine take seconds, which a skipped job never pays.
    from hw3.tracking.training import train_together

    outcomes: list[Outcome] = []
    try:
        if (stop := received()) is not None:
            raise stop  # stopped while the jobs were opened: their runs end KILLED untrained
        results = train_together(jobs)
        for job, result in zip(jobs, results, strict=True):
            outcomes.append(_conclude(job, result))
    except BaseException as err:
        outcomes += [_end(job, err) for job in jobs[len(outcomes) :]]
        if isinstance(err, SystemExit):
            raise
    return outcomes


def _conclude(job: Job, result: list[Metrics] | Diverged) -> Outcome:
    """End a run by how its training ended: FINISHED (also a divergence with
    trainer.on_divergence=stop), else FAILED. Ending it is this run's own affair: if that fails
    (its artifacts, the store), it alone fails."""
    from hw3.engine.train import Diverged

    try:
        if not isinstance(result, Diverged):
            job.finish()
        elif job.cfg.trainer.on_divergence == "stop":
            log.info("%s: %s; stopped (trainer.on_divergence=stop)", job.name, result)
            job.finish(diverged=result)
        else:
            return _end(job, result)
    except Exception as err:
        outcome = _end(job, err)
        if isinstance(err, MlflowException):
            return outcome
        why = (
            f"{job.name} FAILED as its run was ended ({first_line(err)}); its passes are logged "
            "and its checkpoint kept: relaunch to end it"
        )
        return replace(outcome, line=why)
    return Outcome(job.name, "FINISHED")


def judge(name: str, err: BaseException, store_uri: str | None) -> tuple[str, str, str]:
    """What `err` makes of job `name`: its run's status, its `error` tag and its one line."""
    stop = err if isinstance(err, Stopped) else received()
    if stop is None and isinstance(err, KeyboardInterrupt):  # SIGINT outside our handler
        stop = Stopped(signal.SIGINT)
    if stop is not None:  # whatever was raised on the way out of a signal
        if isinstance(err, SystemExit) and stop.signum == REQUEUE_SIGNAL:
            error = (
                f"{stop} (a Slurm time limit or preemption): submitit requeued the job, which "
                "resumes the run from its last pass"
            )
        elif isinstance(err, Stopped | SystemExit | KeyboardInterrupt):
            error = f"{stop}; {RESUMES}"
        else:
            error = f"{stop} ({first_line(err)}); {RESUMES}"
        return "KILLED", error, f"{name} {error}"
    error = first_line(err)
    if isinstance(err, MlflowException) and store_uri is not None:
        line = (
            f"{name} stopped: the tracking store {redact(store_uri)} did not answer "
            f"({first_line(err)[:300]}); relaunch the same command once it does: the run resumes "
            "from its last pass"
        )
        return "FAILED", error, line
    if isinstance(err, ConfigError | TrackingError):
        return "FAILED", error, error  # each names the key to set, not a job
    return "FAILED", error, f"{name} FAILED: {error}"


def _end(job: Job, err: BaseException) -> Outcome:
    """End `job`'s run as `judge` says for `err`; if the store cannot be told, say so and leave
    the run for the relaunch."""
    from hw3.engine.train import Diverged

    status, error, line = judge(job.name, err, job.store.uri)
    tags: dict[str, Any] = {"error": error[:4000]}
    if isinstance(err, Diverged):
        tags |= {"diverged": "true", "diverged_pass": err.epoch}
    try:
        job.end(status, tags, err)
    except MlflowException as store_err:
        why = first_line(store_err)[:300]
        log.warning("%s: run %s not marked %s (%s)", job.name, job.run_id, status, why)
    return Outcome(job.name, status, line)


# --- what run_jobs opens a job with: the fingerprints, the claim, the decision, carried out ---


def config_fingerprint(cfg: Config) -> str:
    """Hash of what the config asks to compute (not where it is stored, nor how fast)."""
    return fingerprint({k: v for k, v in flatten(cfg).items() if k not in PLACE_KEYS})


def run_fingerprint(config_fp: str, dataset_digest: str) -> str:
    """Hash of all that determines a run's results: the config, the engine's code, the data."""
    return fingerprint({"config": config_fp, "engine": engine_version(), "data": dataset_digest})


def open_job(spec: JobSpec) -> Job | Outcome:
    """Claim the job's run (new, resumed or restarted); its outcome if it is done, trained
    elsewhere, or cannot be opened."""
    cfg, store = spec.cfg, None
    try:
        validate(cfg)
        sweep = Sweep.from_env(cfg.tracking.experiment)
        # The sweep's launcher checked the store; its jobs ride out a server restart on retries.
        store = connect(cfg.tracking.uri, probe=sweep.parent_run_id is None)
        experiment = sweep.experiment_id or experiment_id(store, cfg.tracking.experiment)
        files = locate(
            resolve_path(cfg.data.root), system_dir=SYSTEM_DIR, download=cfg.data.download
        )
        return _claim_run(spec, store, sweep, experiment, files)
    except (ConfigError, TrackingError, DataError, MlflowException) as err:
        _, _, line = judge(spec.name, err, store and store.uri)
        return Outcome(spec.name, "FAILED", line)


def _record_on_parent(store: Store, sweep: Sweep, fp: str, run_id: str, *, training: bool) -> None:
    """List the job in its sweep's parent run (run or skipped), so the sweep can be analysed;
    a job that trains keeps the parent RUNNING (another copy of the sweep may have closed it)."""
    if sweep.parent_run_id is None:
        return
    log_values(store, sweep.parent_run_id, tags={f"job.{fp}": run_id})
    if training:
        store.client.update_run(sweep.parent_run_id, status="RUNNING")


def _claim_run(
    spec: JobSpec, store: Store, sweep: Sweep, experiment: str, files: DatasetFiles
) -> Job | Outcome:
    """`open_job` once the store, the experiment and the data files are known."""
    cfg, name = spec.cfg, spec.name
    config_fp = config_fingerprint(cfg)
    fp = run_fingerprint(config_fp, files.digest)
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
        return Outcome(name, "SKIPPED")
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
            return Outcome(name, "SKIPPED")
        tags = {
            "mlflow.runName": name,
            "kind": "train",
            "model": cfg.model.name,
            "seed": str(cfg.seed),
            "fingerprint": fp,
            "config_fingerprint": config_fp,
            "engine_version": engine_version(),
            "dataset_digest": files.digest,
            "overrides": redact(" ".join(spec.overrides)),
            **git_state(),
            **holder_tags(),
            "heartbeat": str(now_ms()),
        }  # what it trains with, the device and torch, hw3.tracking.training adds
        if sweep.parent_run_id is not None:
            tags |= {"mlflow.parentRunId": sweep.parent_run_id, "sweep_id": sweep.sweep_id}
        run_id = _carry_out(action, store, experiment, runs, tags, folder)
        # The job trains: only now torch and the engine are imported (seconds), after its log line.
        from hw3.tracking.training import Job

        job = Job(name, cfg, store, run_id, files, folder / f"{run_id}.pt", claim, spec.hydra_dir)
        try:
            _record_on_parent(store, sweep, fp, run_id, training=True)
        except MlflowException as err:
            return _end(job, err)
        unless_trained.pop_all()
        return job


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
