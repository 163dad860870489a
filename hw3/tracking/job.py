"""One job: a validated config → one training run → one MLflow run that resumes and never lies."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from hw3.engine.data import OFFICIAL_MD5, DataError, load_fashion_mnist
from hw3.engine.device import DeviceError, resolve_device
from hw3.engine.train import Diverged, Metrics, train
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
    log_values,
    logged_steps,
    redact,
)

log = logging.getLogger("hw3")

NOT_PARAMS = ("tracking.uri", "force")  # the URI may carry credentials; force is per launch
PROGRESS = ("train/loss", "test/acc", "smoothness/L", "time/train_pass_s")


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


def config_fingerprint(cfg: Config) -> str:
    """Hash of everything that determines the results (not where they are stored)."""
    return fingerprint({k: v for k, v in flatten(cfg).items() if k not in PLACE_KEYS})


def _record_failure(store: Store, run_id: str, err: BaseException) -> None:
    text = "".join(traceback.format_exception(err))
    tags = {"error": str(err).splitlines()[0][:4000] if str(err) else type(err).__name__}
    if isinstance(err, Diverged):
        tags |= {"diverged": "true", "diverged_pass": err.epoch}
    log_values(store, run_id, tags=tags)
    store.client.log_text(run_id, text, "error.txt")
    status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
    store.client.set_terminated(run_id, status)


def _log_artifacts(store: Store, run_id: str, hydra_dir: Path | None, ckpt: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if hydra_dir is not None and hydra_dir.is_dir():
            (Path(tmp) / ".hydra").mkdir()
            for src in hydra_dir.glob("*.yaml"):  # the URI in them may carry credentials
                (Path(tmp) / ".hydra" / src.name).write_text(redact(src.read_text()))
            store.client.log_artifacts(run_id, str(Path(tmp) / ".hydra"), ".hydra")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
        path = Path(tmp) / "state_dict.pt"
        torch.save(state, path)
        store.client.log_artifact(run_id, str(path), "model")


def _open_run(
    store: Store, experiment: str, cfg: Config, tags: dict[str, str], ckpt: Path
) -> str | None:
    """The run to train into: a new one, or an unfinished one to resume; None to skip."""
    name = tags["mlflow.runName"]
    earlier = find_runs(store, experiment, kind="train", fingerprint=tags["fingerprint"])
    done = next((r for r in earlier if r.info.status == "FINISHED"), None)
    if done is not None and not cfg.force:
        run_id = done.info.run_id
        log.info("skip %s: already FINISHED as run %s (force=true reruns it)", name, run_id)
        return None
    resumable = next((r for r in earlier if r.info.status != "FINISHED"), None)
    if cfg.force or resumable is None:
        ckpt.unlink(missing_ok=True)
        return store.client.create_run(experiment, tags=tags, run_name=name).info.run_id
    run_id = resumable.info.run_id
    store.client.update_run(run_id, status="RUNNING")
    for key in ("error", "diverged", "diverged_pass"):
        if key in resumable.data.tags:
            store.client.delete_tag(run_id, key)
    log_values(store, run_id, tags=tags)  # the sweep resuming it becomes its parent
    log.info("resume %s: run %s from its last checkpoint", name, run_id)
    return run_id


def run_job(cfg: Config, *, overrides: list[str], hydra_dir: Path | None) -> str | None:
    """Train per `cfg` into its MLflow run; return the run id, or None if it was already done.

    A FINISHED run with the same fingerprint is skipped unless `cfg.force`; an unfinished one
    (killed or failed) is resumed from its checkpoint in the same MLflow run.
    """
    try:
        validate(cfg)
        sweep = Sweep.from_env(cfg.tracking.experiment)
        # The sweep's launcher checked the store; its jobs ride out a server restart on retries.
        store = connect(cfg.tracking.uri, probe=sweep.parent_run_id is None)
        experiment = sweep.experiment_id or experiment_id(store, cfg.tracking.experiment)
    except (ConfigError, TrackingError) as err:
        raise RunFailed(str(err)) from err
    fp = config_fingerprint(cfg)
    name = f"{cfg.model.name}-seed{cfg.seed}"
    tags = {
        "mlflow.runName": name,
        "kind": "train",
        "model": cfg.model.name,
        "seed": str(cfg.seed),
        "fingerprint": fp,
        "overrides": redact(" ".join(overrides)),
        "torch_version": torch.__version__,
        **git_state(),
    }
    if sweep.parent_run_id is not None:
        tags |= {"mlflow.parentRunId": sweep.parent_run_id, "sweep_id": sweep.sweep_id}
    ckpt = resolve_path(cfg.trainer.checkpoint_dir) / experiment / f"{fp}.pt"
    run_id = _open_run(store, experiment, cfg, tags, ckpt)
    if run_id is None:
        return None

    try:
        params = {k: v for k, v in flatten(cfg).items() if k not in NOT_PARAMS}
        log_values(store, run_id, params=params)
        device = resolve_device(cfg.trainer.device)
        where = {"device": device.type, "host": socket.gethostname(), "pid": os.getpid()}
        log_values(store, run_id, tags=where)
        already = logged_steps(store, run_id, "test/acc")

        def on_pass_end(epoch: int, metrics: Metrics) -> None:
            if epoch in already:  # replayed from a checkpoint and logged before the kill
                return
            now = int(time.time() * 1000)
            log_values(store, run_id, metrics=metrics, step=epoch, timestamp_ms=now)
            shown = " ".join(f"{k}={metrics[k]:.4g}" for k in PROGRESS if k in metrics)
            log.info("%s pass %d/%d: %s", name, epoch, cfg.trainer.epochs, shown)

        data = load_fashion_mnist(
            resolve_path(cfg.data.root),
            normalize=cfg.data.normalize,
            mean=cfg.data.mean,
            std=cfg.data.std,
            train_size=cfg.data.train_size,
            test_size=cfg.data.test_size,
            download=cfg.data.download,
            checksums=OFFICIAL_MD5 if cfg.data.verify else None,
        )
        train(
            data,
            model=cfg.model.name,
            lr=cfg.optimizer.lr,
            momentum=cfg.optimizer.momentum,
            weight_decay=cfg.optimizer.weight_decay,
            epochs=cfg.trainer.epochs,
            batch_size=cfg.trainer.batch_size,
            seed=cfg.seed,
            device=device.type,
            smoothness=cfg.trainer.smoothness,
            chunk_size=cfg.trainer.chunk_size,
            cuda_graphs=cfg.trainer.cuda_graphs,
            on_pass_end=on_pass_end,
            checkpoint=ckpt,
        )
        _log_artifacts(store, run_id, hydra_dir, ckpt)
        store.client.set_terminated(run_id, "FINISHED")
    except (DataError, DeviceError, Diverged) as err:
        _record_failure(store, run_id, err)
        raise RunFailed(f"{name} FAILED: {str(err).splitlines()[0]}") from err
    except BaseException as err:
        _record_failure(store, run_id, err)
        raise
    ckpt.unlink(missing_ok=True)
    return run_id
