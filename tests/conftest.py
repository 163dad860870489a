"""Shared fixtures: Hydra composition, tiny IDX datasets, and the CLI as a subprocess."""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from hw3.config import PROJECT_ROOT, register

register()

METRICS = {
    "train/loss",
    "train/loss_running",
    "train/acc",
    "test/loss",
    "test/acc",
    "smoothness/L",
    "smoothness/lr_max",
    "smoothness/u_norm",
    "smoothness/grad_norm",
    "time/train_pass_s",
    "time/smoothness_s",
    "time/eval_s",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range
    (32768 and up on Linux, 49152 and up elsewhere): while a test keeps it free, no outgoing
    connection can be handed it as its own port."""
    for port in random.sample(range(10_000, 32_768), 100):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port in 10000-32767")


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides, as run.py would (`hydra=True` keeps that node)."""

    def _compose(*overrides: str, config_name: str = "config", hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)

    return _compose


def write_idx(path: Path, tensor: torch.Tensor, *, gz: bool = False) -> Path:
    """Write a uint8 tensor as an IDX file (magic 0x0000080N, big-endian dims)."""
    header = bytes([0, 0, 0x08, tensor.dim()])
    header += b"".join(d.to_bytes(4, "big") for d in tensor.shape)
    blob = header + tensor.to(torch.uint8).contiguous().numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def write_dataset(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A learnable synthetic FashionMNIST in torchvision's layout under `root`."""
    g = torch.Generator().manual_seed(seed)
    raw = root / "FashionMNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for c in range(10):  # a bright stripe whose row says the class
            images[labels == c, 2 * c + 4 : 2 * c + 6, 4:24] += 180
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with 512 training and 256 test examples (use data.verify=false)."""
    return write_dataset(tmp_path_factory.mktemp("tiny"), 512, 256)


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: ours without $MLFLOW_TRACKING_URI, then `env`."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})


def run_cli(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `python <script> args…` from the project root; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=PROJECT_ROOT,
    )


def store_uri(where: Path | str) -> str:
    """A tracking URI: `where` itself, or the SQLite store a test keeps in folder `where`."""
    return f"sqlite:///{where / 'mlflow.db'}" if isinstance(where, Path) else where


def job_args(
    tmp: Path, root: Path, experiment: str, *extra: str, uri: str | None = None
) -> list[str]:
    """Overrides that keep everything a run writes inside `tmp` (its store too, unless `uri`)."""
    return [
        f"data.root={root}",
        "data.verify=false",
        "trainer.device=cpu",
        f"trainer.checkpoint_dir={tmp / 'ckpt'}",
        f"tracking.uri={uri or store_uri(tmp)}",
        f"tracking.experiment={experiment}",
        f"hydra.run.dir={tmp / 'outputs'}",
        f"hydra.sweep.dir={tmp / 'multirun'}",
        *extra,
    ]


def runs_of(where: Path | str, experiment: str, kind: str = "train") -> list:
    """The runs of `kind` (train, sweep) in `experiment` of the store at `where`."""
    client = MlflowClient(store_uri(where))
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


def history_of(where: Path | str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of run `run_id` as its sorted (step, value) points."""
    client = MlflowClient(store_uri(where))
    keys = client.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys
    }
