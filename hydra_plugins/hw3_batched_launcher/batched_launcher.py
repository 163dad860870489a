"""hydra/launcher=batched: the sweep's jobs in this process, compatible ones trained together.

First each job is set up as Hydra's basic launcher does (its composed config, its output folder
and .hydra/*.yaml), with a task function that only collects it; then hw3.tracking.group trains
the jobs group after group; last, each job's return gets the status its training earned, so
Hydra and run.py report failures as for any other launcher.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hw3.tracking.cli import job_failed
from hw3.tracking.errors import LaunchFailed

if TYPE_CHECKING:
    from hw3.tracking.job import JobSpec

log = logging.getLogger("hw3")


class BatchedLauncher(Launcher):
    """Runs a sweep in this process, up to `group_size` compatible jobs trained together."""

    def __init__(self, group_size: int) -> None:
        if type(group_size) is not int or group_size < 1:
            raise LaunchFailed(
                f"invalid hydra.launcher.group_size={group_size!r}: it must be an integer >= 1 "
                "(set hydra.launcher.group_size=N)"
            )
        self.group_size = group_size
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep the sweep's config; the task function (run.py's) is what the groups replace."""
        self.config, self.hydra_context = config, hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Set up every job, train them group after group, return each job's real outcome."""
        # Imported here: Hydra imports this module whenever it starts, torch is not needed then.
        from hw3.tracking.group import run_groups

        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(
            "Launching %d jobs locally, up to %d trained together",
            len(job_overrides),
            self.group_size,
        )
        returns = [
            self._set_up(idx, overrides)
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx)
        ]
        collected = [r for r in returns if r.status == JobStatus.COMPLETED]
        outcomes = run_groups([r.return_value for r in collected], self.group_size)
        for ret, outcome in zip(collected, outcomes, strict=True):
            ret.return_value = None
            if outcome.line is not None:  # as run.py reports it (hw3.tracking.cli.fail)
                ret.status, ret.return_value = JobStatus.FAILED, job_failed(outcome.line)
        return returns

    def _set_up(self, idx: int, overrides: Sequence[str]) -> JobReturn:
        """Job `idx` as the basic launcher sets it up; its return value is its JobSpec."""
        assert self.config is not None and self.hydra_context is not None
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = self.hydra_context.config_loader.load_sweep_config(
            self.config, list(overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=_collect,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret


def _collect(cfg: DictConfig) -> JobSpec:
    """The task function of the set-up pass: what run.py's main would train, as a JobSpec."""
    from hw3.tracking.job import JobSpec

    return JobSpec.from_hydra(cfg)
