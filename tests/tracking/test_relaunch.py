"""What a relaunched job does with the runs of its configuration it finds: the table of cases."""

from __future__ import annotations

import pytest

from hw3.tracking.relaunch import Do, Found, decide

ENGINE, DATA = "e2", "d2"  # the job's engine version and data digest
UNREADABLE = "checkpoint /ckpt/r1.pt is unreadable (truncated or corrupt: EOFError)"
HOLDER = "pid 4242 on node7"


def run(run_id: str, status: str = "FAILED", engine: str = ENGINE, data: str = DATA, **facts):
    """A run of the job's configuration (its fingerprint's unless `engine` or `data` differ)."""
    return Found(run_id, status, engine_version=engine, dataset_digest=data, **facts)


# (runs found, newest first; force) → (what is done, with which run, words of its reason,
# runs superseded with words of why)
CASES = {
    "nothing found: a new run": (
        [], False, Do.NEW, None, "no earlier run of it", {},
    ),
    "FINISHED: skipped": (
        [run("r1", "FINISHED")], False,
        Do.SKIP_FINISHED, "r1", "already FINISHED as run r1 (force=true reruns it)", {},
    ),
    "the newest FINISHED is named": (
        [run("r2", "FINISHED"), run("r1", "FINISHED")], False, Do.SKIP_FINISHED, "r2", "r2", {},
    ),
    "FINISHED, force: a new run, the FINISHED one kept": (
        [run("r1", "FINISHED")], True, Do.NEW, None, "force=true (run r1 is FINISHED)", {},
    ),
    "trained by a live process: skipped, naming it": (
        [run("r1", "RUNNING", live=HOLDER)], False,
        Do.SKIP_LIVE, "r1", f"run r1 is being trained by {HOLDER}", {},
    ),
    "force never trains beside a live process": (
        [run("r2", "RUNNING", live=HOLDER), run("r1", "FINISHED")], True,
        Do.SKIP_LIVE, "r2", HOLDER, {},
    ),
    "live under other engine code: skipped, as its claim says": (
        [run("r1", "RUNNING", engine="e1", live=HOLDER)], False, Do.SKIP_LIVE, "r1", HOLDER, {},
    ),
    "unfinished with a checkpoint: resumed in place": (
        [run("r1", "RUNNING", passes=2, checkpoint="readable")], False,
        Do.RESUME, "r1", "run r1 from its last checkpoint", {},
    ),
    "KILLED by a signal or requeued by Slurm: resumed in place": (
        [run("r1", "KILLED", passes=1, checkpoint="readable")], False,
        Do.RESUME, "r1", "run r1 from its last checkpoint", {},
    ),
    "KILLED, its checkpoint lost: restarted openly": (
        [run("r1", "KILLED", passes=1)], False,
        Do.RESTART, "r1", "run r1 logged passes but its checkpoint is gone", {},
    ),
    "a pass checkpointed, not logged: resumed in place": (
        [run("r1", passes=0, checkpoint="readable")], False,
        Do.RESUME, "r1", "from its last checkpoint", {},
    ),
    "failed before its first pass: resumed in place from pass 1": (
        [run("r1")], False,
        Do.RESUME, "r1", "run r1 from pass 1 (it logged no pass and left no checkpoint)", {},
    ),
    "no pass logged, checkpoint unreadable: resumed from pass 1, the file deleted": (
        [run("r1", checkpoint="unreadable", checkpoint_error=UNREADABLE)], False,
        Do.RESUME, "r1", f"from pass 1 (it logged no pass; its {UNREADABLE}: deleted)", {},
    ),
    "passes logged, checkpoint gone: restarted openly": (
        [run("r1", "RUNNING", passes=1)], False,
        Do.RESTART, "r1", "run r1 logged passes but its checkpoint is gone", {},
    ),
    "passes logged, checkpoint unreadable: restarted openly": (
        [run("r1", passes=1, checkpoint="unreadable", checkpoint_error=UNREADABLE)], False,
        Do.RESTART, "r1", f"run r1 logged passes but its {UNREADABLE}", {},
    ),
    "the newest unfinished run is the one resumed": (
        [run("r2", checkpoint="readable"), run("r1", checkpoint="readable")], False,
        Do.RESUME, "r2", "run r2", {},
    ),
    "a restarted run is never continued": (
        [run("r1", "KILLED", passes=1, checkpoint="readable", replaced=True)], False,
        Do.NEW, None, "no earlier run of it can be continued", {},
    ),
    "failed on other data before any pass or checkpoint: resumed on the repaired data": (
        [run("r1", data="d1")], False,
        Do.RESUME_REPAIRED, "r1", "run r1 from pass 1 on repaired data (dataset_digest d1 → d2", {},
    ),
    "a pass checkpointed on other data is never continued": (
        [run("r1", data="d1", checkpoint="readable")], False,
        Do.NEW, None, "can be continued", {"r1": "dataset_digest d1 → d2"},
    ),
    "an unreadable checkpoint on other data is a checkpoint too": (
        [run("r1", data="d1", checkpoint="unreadable", checkpoint_error=UNREADABLE)], False,
        Do.NEW, None, "can be continued", {"r1": "dataset_digest d1 → d2"},
    ),
    "passes logged on other data: superseded": (
        [run("r1", "RUNNING", data="d1", passes=1, checkpoint="readable")], False,
        Do.NEW, None, "can be continued", {"r1": "dataset_digest d1 → d2"},
    ),
    "other engine code, even without a pass: superseded, not repaired": (
        [run("r1", engine="e1")], False,
        Do.NEW, None, "can be continued", {"r1": "engine_version e1 → e2"},
    ),
    "other engine code and data: both named": (
        [run("r1", "RUNNING", engine="e1", data="d1", passes=2, checkpoint="readable")], False,
        Do.NEW, None, "can be continued", {"r1": "engine_version e1 → e2, dataset_digest d1 → d2"},
    ),
    "superseded already: left alone": (
        [run("r1", "KILLED", engine="e1", replaced=True)], False,
        Do.NEW, None, "can be continued", {},
    ),
    "FINISHED under other engine code: kept, a new run": (
        [run("r1", "FINISHED", engine="e1")], False, Do.NEW, None, "can be continued", {},
    ),
    "resumed in place, older versions superseded": (
        [run("r2", checkpoint="readable"), run("r1", engine="e1", passes=1)], False,
        Do.RESUME, "r2", "run r2", {"r1": "engine_version e1 → e2"},
    ),
    "resumed on repaired data, older engine code superseded": (
        [run("r2", data="d1"), run("r1", engine="e1", data="d1")], False,
        Do.RESUME_REPAIRED, "r2", "run r2", {"r1": "engine_version e1 → e2, dataset_digest d1"},
    ),
    "a skip supersedes nothing": (
        [run("r2", "FINISHED"), run("r1", engine="e1")], False,
        Do.SKIP_FINISHED, "r2", "already FINISHED as run r2", {},
    ),
    "force: a new run, the unfinished ones superseded": (
        [run("r2", checkpoint="readable"), run("r1", data="d1")], True,
        Do.NEW, None, "force=true (no run of it is FINISHED)",
        {"r2": "force=true reran it", "r1": "dataset_digest d1 → d2"},
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("found", "force", "do", "run_id", "reason", "superseded"), CASES.values(), ids=CASES.keys()
)
def test_what_a_relaunch_does(found, force, do, run_id, reason, superseded):
    action = decide(found, engine_version=ENGINE, dataset_digest=DATA, force=force)
    assert action.do == do
    assert (action.run.run_id if action.run else None) == run_id
    assert reason in action.reason
    assert {s.run.run_id: s.why for s in action.supersede}.keys() == superseded.keys()
    for s in action.supersede:
        assert superseded[s.run.run_id] in s.why
    assert action.discard_checkpoint == ("deleted" in reason)
