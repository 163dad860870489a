"""Hydra callback: a sweep's store, experiment and parent run, made once by the launcher, and
a run per launch nested under the parent."""

from __future__ import annotations

import atexit
import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from hydra.experimental.callback import Callback
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from hw3.tracking.claim import Heartbeat, file_lock, holder_tags, live_holder, now_ms
from hw3.tracking.errors import LaunchFailed, first_line
from hw3.tracking.provenance import fingerprint, git_state
from hw3.tracking.reading import find_runs
from hw3.tracking.record import log_values
from hw3.tracking.relaunch import REPLACED_TAGS
from hw3.tracking.stopping import launch_stops_cleanly, received
from hw3.tracking.store import (
    Store,
    TrackingError,
    checkpoint_folder,
    connect,
    experiment_id,
    redact,
)

log = logging.getLogger("hw3")

# Environment that a sweep's launching process hands its jobs.
ENV_EXPERIMENT, ENV_EXPERIMENT_ID = "HW3_EXPERIMENT", "HW3_EXPERIMENT_ID"
ENV_PARENT, ENV_SWEEP = "HW3_PARENT_RUN_ID", "HW3_SWEEP_ID"


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


def sweep_id(config: DictConfig) -> str:
    """The same id for the same sweep launched again (its grid and its fixed values)."""
    body = OmegaConf.to_container(config, resolve=False)
    body.pop("hydra")
    body.pop("force", None)
    params = config.hydra.sweeper.get("params")
    grid = OmegaConf.to_container(params, resolve=False) if params else {}
    task = sorted(o for o in config.hydra.overrides.task if not o.startswith("force="))
    return fingerprint({"config": body, "grid": grid, "overrides": task})


def close_sweep(
    store: Store,
    experiment: str,
    parent_id: str,
    *,
    completed: bool,
    stale_after_s: float,
    end_time: int | None = None,
    stopped: bool = False,
) -> str:
    """End a sweep's parent run and return its status: FINISHED if the sweep completed and
    every current job finished, KILLED if a signal stopped it, else FAILED; left RUNNING
    while another live process (a second copy of the sweep, a Slurm job) still trains one of
    its runs: that launch closes it.
    Only the jobs' runs (kind=train) count, not the launches nested beside them. `end_time`:
    when it ended (Unix ms), now if None."""
    children = find_runs(store, experiment, kind="train", **{"mlflow.parentRunId": parent_id})
    # Runs replaced by newer ones (other engine code, a lost checkpoint) no longer count.
    current = [r for r in children if not set(REPLACED_TAGS) & set(r.data.tags)]
    live = [
        r for r in current if live_holder(r.data.tags, r.info.status, stale_after_s=stale_after_s)
    ]
    if live:
        log.info("%d of its runs still train in other processes", len(live))
        return "RUNNING"
    ok = completed and all(r.info.status == "FINISHED" for r in current)
    status = "FINISHED" if ok else "KILLED" if stopped else "FAILED"
    store.client.set_terminated(parent_id, status, end_time=end_time)
    return status


def end_dead_launches(
    store: Store, experiment: str, parent_id: str, *, stale_after_s: float
) -> int:
    """Mark KILLED the sweep's launches left RUNNING by a launching process that died (kill -9,
    a lost node), ended at their last heartbeat; return how many launches the sweep had."""
    launches = find_runs(store, experiment, kind="launch", **{"mlflow.parentRunId": parent_id})
    for run in launches:
        tags = run.data.tags
        if run.info.status == "RUNNING" and not live_holder(
            tags, "RUNNING", stale_after_s=stale_after_s
        ):
            last_seen = int(tags.get("heartbeat", run.info.start_time))
            store.client.set_terminated(run.info.run_id, "KILLED", end_time=last_seen)
    return len(launches)


def launch_status(completed: bool, sweep_status: str) -> str:
    """A launch's own status: FINISHED if it ran to its end and the sweep did not fail, KILLED
    if a signal stopped it, else FAILED."""
    if received() is not None:
        return "KILLED"
    return "FINISHED" if completed and sweep_status != "FAILED" else "FAILED"


@dataclass
class _OpenSweep:
    """What a launch holds open until the sweep ends."""

    store: Store
    experiment: str
    parent: str
    launch: str
    heartbeat: Heartbeat
    stale_after_s: float
    signals: ExitStack  # the launch's own handling of SIGTERM and SIGINT


class MlflowSweep(Callback):
    """Creates the store's schema, the experiment and the parent run before any job starts.

    Jobs get their ids through the environment and create their runs by id, so parallel
    jobs never race a schema migration or an experiment lookup. The parent run is closed
    when the sweep ends, FAILED if any job failed, also when the sweep aborts.

    The parent run lives as long as the sweep, first launch to last: each launch is a run
    `launch-<n>` (kind=launch) nested under it, so that its own time and outcome show.
    """

    def __init__(self) -> None:
        self._open: _OpenSweep | None = None

    def __getstate__(self) -> dict[str, Any]:
        """What a job's process gets (joblib pickles Hydra's callbacks with each job): not the
        open sweep, whose heartbeat thread stays with the launcher that closes it."""
        return {**self.__dict__, "_open": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._open_sweep(config)
        except (TrackingError, MlflowException) as err:
            raise LaunchFailed(f"{first_line(err)} (the sweep launched no job)") from err

    def _open_sweep(self, config: DictConfig) -> None:
        """Open the store, the experiment and the parent run; hand their ids to the jobs."""
        store = connect(config.tracking.uri)
        name = config.tracking.experiment
        experiment = experiment_id(store, name)
        sid = sweep_id(config)
        # Two copies of one sweep launched at once must share one parent run.
        folder = checkpoint_folder(config.trainer.checkpoint_dir, store, experiment)
        folder.mkdir(parents=True, exist_ok=True)
        stale_after_s = config.tracking.stale_after_s
        overrides = redact(" ".join(config.hydra.overrides.task))
        with file_lock(folder / f"sweep-{sid}.lock"):
            earlier = find_runs(store, experiment, kind="sweep", sweep_id=sid)
            if earlier:
                parent = earlier[0].info.run_id
                store.client.update_run(parent, status="RUNNING")
            else:
                tags = {"kind": "sweep", "sweep_id": sid, "overrides": overrides, **git_state()}
                run_name = f"sweep-{sid[:8]}"
                parent = store.client.create_run(experiment, run_name=run_name, tags=tags)
                parent = parent.info.run_id
            number = end_dead_launches(store, experiment, parent, stale_after_s=stale_after_s) + 1
            tags = {
                "kind": "launch",
                "sweep_id": sid,
                "launch": str(number),
                "mlflow.parentRunId": parent,
                "overrides": overrides,
                **git_state(),
                **holder_tags(),
                "heartbeat": str(now_ms()),
            }
            launch = store.client.create_run(experiment, run_name=f"launch-{number}", tags=tags)
            launch = launch.info.run_id
        os.environ |= {
            ENV_EXPERIMENT: name,
            ENV_EXPERIMENT_ID: experiment,
            ENV_PARENT: parent,
            ENV_SWEEP: sid,
        }
        where = redact(store.uri)
        log.info("sweep %s: parent run %s in experiment %s at %s", sid, parent, name, where)
        log.info("launch %d of the sweep: run %s", number, launch)

        def beat() -> None:
            log_values(store, launch, tags={"heartbeat": now_ms()})

        heartbeat = Heartbeat(beat, config.tracking.heartbeat_s)
        heartbeat.start()
        signals = ExitStack()
        signals.enter_context(launch_stops_cleanly())
        self._open = _OpenSweep(
            store, experiment, parent, launch, heartbeat, stale_after_s, signals
        )
        atexit.register(self._close, completed=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(completed=True)
        atexit.unregister(self._close)

    def _close(self, completed: bool) -> None:
        if self._open is None:
            return
        sweep, self._open = self._open, None
        sweep.heartbeat.stop()
        end = now_ms()  # the parent ends with its latest launch, not a moment before it
        stop = received()
        status = close_sweep(
            sweep.store,
            sweep.experiment,
            sweep.parent,
            completed=completed,
            stale_after_s=sweep.stale_after_s,
            end_time=end,
            stopped=stop is not None,
        )
        ended = launch_status(completed, status)
        if stop is not None:
            error = f"{stop}; relaunch the same command: its unfinished runs resume"
            log_values(sweep.store, sweep.launch, tags={"error": error})
        sweep.store.client.set_terminated(sweep.launch, ended, end_time=end)
        sweep.signals.close()
        log.info("sweep parent run %s: %s (this launch: %s)", sweep.parent, status, ended)
