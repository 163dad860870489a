"""Shared fixtures: Hydra composition, tiny IDX datasets, and the CLI as a subprocess."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hw3.config import PROJECT_ROOT, register

register()


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


def run_cli(script: str, *args: str, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `python <script> args…` from the project root; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=PROJECT_ROOT,
    )
