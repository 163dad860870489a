"""Fixtures shared by every test folder: Hydra composition, a tiny dataset, one thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import write_dataset
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from hw3.tracking.schema import PROJECT_ROOT, register

register()


@pytest.fixture(scope="session")
def compose_config() -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides, as run.py would (`hydra=True` keeps that node)."""

    def _compose(*overrides: str, config_name: str = "config", hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)

    return _compose


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with 512 training and 256 test examples (use data.verify=false)."""
    return write_dataset(tmp_path_factory.mktemp("tiny"), 512, 256)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny workloads run faster without thread sync on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
