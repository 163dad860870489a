"""Fixtures shared by every test folder: Hydra composition, tiny datasets, one thread; and how
xdist's workers share the suite."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from support.data import write_dataset

from hw3.tracking.schema import PROJECT_ROOT, register

register()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `--dist loadgroup` (scripts/test): the `@group` suffix of an `xdist_group` test's
    id, and the tests in the order that ends soonest.

    pytest-xdist 3.8 sends a group's tests to one worker by that suffix, which it writes to
    `item._nodeid`; pytest 9 builds the id from `item._id` instead, so the groups were silently
    ignored (a group's module fixture was made on both workers). Write it where pytest reads it."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    for item in items:
        marks = item.iter_markers("xdist_group")  # named as xdist names them
        names = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        )
        suffix = f"@{'_'.join(names)}"
        if names and not item.nodeid.endswith(suffix):  # pytest < 9 took xdist's own suffix
            from _pytest.nodeid import NodeId  # pytest 9's

            item._id = NodeId.parse(item.nodeid + suffix)
    # Longest first, as xdist hands out work in this order: the Slurm tests (one at a time on
    # the cluster, beside everything else), then the files with the most slow tests; the quick
    # tests fill the workers' ends.
    slurm = {item.path for item in items if item.nodeid.endswith("@slurm")}
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: (item.path not in slurm, -slow[item.path]))


@pytest.fixture(scope="session")
def compose_config() -> Callable[..., DictConfig]:
    """Compose conf/config.yaml with overrides, as run.py would (`hydra=True` keeps that node)."""

    def _compose(*overrides: str, config_name: str = "config", hydra: bool = False) -> DictConfig:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=hydra)

    return _compose


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with 256 training and 128 test examples (use data.verify=false)."""
    return write_dataset(tmp_path_factory.mktemp("tiny"), 256, 128)


@pytest.fixture(scope="session")
def slow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with 1,500 training and 300 test examples: a pass takes a moment (about two
    seconds), so that a process can be caught, signalled or killed while it trains between its
    first and its last pass (use data.verify=false)."""
    return write_dataset(tmp_path_factory.mktemp("slow"), 1500, 300)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny workloads run faster without thread sync on a busy machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
