"""A sweep's compatible jobs trained together: one process, one data read, one device.

Jobs share a group when they train the same architecture on the same data, on the same device,
with the same determinism, batch size and measurement; `group_size` caps a group. Each member
goes through its own job's steps (hw3.tracking.job: claim, skip or resume, its own MLflow run),
so its run is a run.py run's but for the tags `group_size` and `group_pass_time`; a job alone
in its group runs exactly as with run.py (both go through hw3.tracking.job.run_jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hw3.tracking.job import JobSpec, Outcome, run_jobs
from hw3.tracking.provenance import fingerprint
from hw3.tracking.schema import Config, flatten, resolve_path

log = logging.getLogger("hw3")

# What members must share besides the data (all of data.*): one device and one set of kernel
# settings for the group, steps of one size side by side, the same network (variant and its
# parameters) and landscape measurement (so that the members' passes take the same time).
SHARED_KEYS = ("trainer.device", "trainer.deterministic", "trainer.batch_size")
SHARED_GROUPS = ("model.", "data.", "smoothness.")


def group_key(cfg: Config) -> str:
    """Jobs with the same key can train together (data.root compared as the folder it names)."""
    values = flatten(cfg)
    shared = {k: v for k, v in values.items() if k in SHARED_KEYS or k.startswith(SHARED_GROUPS)}
    return fingerprint(shared | {"data.root": str(resolve_path(cfg.data.root))})


def plan_groups(configs: Sequence[Config], group_size: int) -> list[list[int]]:
    """The configs' indices in groups of at most `group_size` sharing a key, in launch order."""
    groups: list[list[int]] = []
    filling: dict[str, list[int]] = {}  # key → its group that is not full yet
    for i, cfg in enumerate(configs):
        key = group_key(cfg)
        if key not in filling or len(filling[key]) >= group_size:
            filling[key] = []
            groups.append(filling[key])
        filling[key].append(i)
    return groups


def run_groups(specs: Sequence[JobSpec], group_size: int) -> list[Outcome]:
    """Train the jobs group after group in this process; per job its outcome."""
    outcomes: list[Outcome | None] = [None] * len(specs)
    groups = plan_groups([s.cfg for s in specs], group_size)
    for n, group in enumerate(groups, start=1):
        names = ", ".join(specs[i].name for i in group)
        log.info("group %d/%d: %s", n, len(groups), names)
        for i, outcome in zip(group, run_jobs([specs[i] for i in group]), strict=True):
            outcomes[i] = outcome
    return outcomes
