"""What a job does with the runs of its configuration it finds: one rule, on plain values.

hw3.tracking.job gathers the facts (one search of the configuration's runs, their liveness,
logged passes and checkpoints) and carries out the action that `decide` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal

# Tags of a run that a newer run replaced: it is never continued, nor counted as current.
REPLACED_TAGS = ("superseded", "restarted_as")

Checkpoint = Literal["absent", "readable", "unreadable"]


@dataclass(frozen=True)
class Found:
    """One existing training run of the job's configuration, as far as the decision goes.

    `passes` and `checkpoint` are looked at only for runs that could be continued
    (`may_continue`); they are 0 and "absent" for the others.
    """

    run_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, …
    engine_version: str
    dataset_digest: str
    live: str | None = None  # who trains it, if a live process does (claim.live_holder)
    replaced: bool = False  # tagged superseded or restarted_as
    passes: int = 0  # logged passes
    checkpoint: Checkpoint = "absent"
    checkpoint_error: str = ""  # why an unreadable checkpoint is unreadable, naming the file

    @property
    def may_continue(self) -> bool:
        """Whether it could be trained on: unfinished, not trained by a live process, not
        replaced by a newer run."""
        return self.status != "FINISHED" and self.live is None and not self.replaced


class Do(StrEnum):
    """What a job does."""

    SKIP_FINISHED = "skip_finished"
    SKIP_LIVE = "skip_live"
    RESUME = "resume"  # in place, from its checkpoint or from pass 1
    RESUME_REPAIRED = "resume_repaired"  # in place, taking this job's data and fingerprint
    RESTART = "restart"  # a new run in place of one whose passes cannot be continued
    NEW = "new"


@dataclass(frozen=True)
class Superseded:
    """A run that this job's action leaves behind, and what changed since it trained."""

    run: Found
    why: str


@dataclass(frozen=True)
class Action:
    """What to do, with which run (None for a new one), why in words, and whom it supersedes."""

    do: Do
    run: Found | None
    reason: str
    supersede: tuple[Superseded, ...] = ()
    discard_checkpoint: bool = False  # the run's unreadable checkpoint is deleted first

    @property
    def trains(self) -> bool:
        """Whether the job trains (not a skip)."""
        return self.do not in (Do.SKIP_FINISHED, Do.SKIP_LIVE)


def decide(
    found: Sequence[Found], *, engine_version: str, dataset_digest: str, force: bool
) -> Action:
    """What a job whose code and data are `engine_version` and `dataset_digest` does with the
    runs of its configuration `found` (newest first); `force` reruns a FINISHED run."""

    def same(run: Found) -> bool:  # the same fingerprint: the same config, code and data
        return (run.engine_version, run.dataset_digest) == (engine_version, dataset_digest)

    finished = next((r for r in found if same(r) and r.status == "FINISHED"), None)
    if finished is not None and not force:
        why = f"already FINISHED as run {finished.run_id} (force=true reruns it)"
        return Action(Do.SKIP_FINISHED, finished, why)
    # Any run of the configuration: its claim (hw3.tracking.job) excludes every other process.
    if (live := next((r for r in found if r.live is not None), None)) is not None:
        return Action(Do.SKIP_LIVE, live, f"run {live.run_id} is being trained by {live.live}")

    candidates = [r for r in found if r.may_continue]
    resumable = next((r for r in candidates if same(r)), None)
    repaired = next(
        (
            r
            for r in candidates
            if r.engine_version == engine_version and r.passes == 0 and r.checkpoint == "absent"
        ),
        None,
    )
    if force:
        why = f"run {finished.run_id} is FINISHED" if finished else "no run of it is FINISHED"
        action = Action(Do.NEW, None, f"force=true ({why})")
    elif resumable is not None:
        action = _continue(resumable)
    elif repaired is not None:
        action = Action(
            Do.RESUME_REPAIRED,
            repaired,
            f"run {repaired.run_id} from pass 1 on repaired data (dataset_digest "
            f"{repaired.dataset_digest} → {dataset_digest}; it logged no pass and left no "
            "checkpoint)",
        )
    else:
        why = "no earlier run of it can be continued" if found else "no earlier run of it"
        action = Action(Do.NEW, None, why)

    supersede = []
    for run in candidates:
        if action.run is not None and run.run_id == action.run.run_id:
            continue
        changed = [
            f"{key} {old} → {new}"
            for key, old, new in (
                ("engine_version", run.engine_version, engine_version),
                ("dataset_digest", run.dataset_digest, dataset_digest),
            )
            if old != new
        ]
        if changed or force:
            supersede.append(Superseded(run, ", ".join(changed) or "force=true reran it"))
    return replace(action, supersede=tuple(supersede))


def _continue(run: Found) -> Action:
    """What becomes of an unfinished run of this very fingerprint that no live process trains."""
    if run.checkpoint == "readable":
        return Action(Do.RESUME, run, f"run {run.run_id} from its last checkpoint")
    if run.passes == 0 and run.checkpoint == "absent":
        why = f"run {run.run_id} from pass 1 (it logged no pass and left no checkpoint)"
        return Action(Do.RESUME, run, why)
    if run.passes == 0:  # unreadable, but nothing of it was logged: start over in place
        why = f"run {run.run_id} from pass 1 (it logged no pass; its {run.checkpoint_error}"
        return Action(Do.RESUME, run, f"{why}: deleted)", discard_checkpoint=True)
    lost = "checkpoint is gone" if run.checkpoint == "absent" else run.checkpoint_error
    return Action(Do.RESTART, run, f"run {run.run_id} logged passes but its {lost}")
