"""SIGTERM and Ctrl-C stop a job cleanly, in a real process: its run KILLED with an error that
names the signal, its claim released, one line and a non-zero exit; the relaunch resumes it and
logs every pass once. The same for every job of a sweep, whatever its launcher, and its launch."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from support.cli import error_lines, job_args, output, run_cli
from support.processes import WAIT_S, launched, wait_for
from support.runs import EPOCHS, history_of, logged_passes, runs_in

from hw3.tracking.claim import Claim

pytestmark = pytest.mark.slow  # real CLI runs, a few seconds each

RESUMES = "relaunch the same command: the run resumes from its last pass"


def signal_after_a_pass(
    proc: subprocess.Popen, tmp: Path, experiment: str, signum: int, *, group: bool
) -> int:
    """Send `signum` to `proc` (to its whole process group if `group`, as a terminal's Ctrl-C
    or a shutdown does) once a run of `experiment` logged a pass; `proc`'s exit status."""

    def logged() -> bool:
        return any(logged_passes(tmp, r.info.run_id) for r in runs_in(tmp, experiment))

    wait_for(f"a run of {experiment} to log a pass", logged, proc)
    if group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    return proc.wait(timeout=WAIT_S)


def assert_every_pass_once(tmp: Path, experiment: str, names: list[str]) -> None:
    """The experiment's runs are `names`, FINISHED, each metric logged at passes 1..EPOCHS once."""
    runs = runs_in(tmp, experiment)
    assert sorted(r.info.run_name for r in runs) == names
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        for key, points in history_of(tmp, run.info.run_id).items():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), (run.info.run_name, key)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_job_ends_its_run_killed_and_the_relaunch_resumes_it(
    tmp_path, slow_root, signum
):
    args = job_args(tmp_path, slow_root, "stop", f"trainer.epochs={EPOCHS}")
    with launched(args, tmp_path) as job:
        returncode = signal_after_a_pass(job, tmp_path, "stop", signum, group=False)
    name = signal.Signals(signum).name
    err = (tmp_path / "launcher.err").read_text()
    assert returncode != 0
    assert error_lines(err) == [f"error: plain-seed0 stopped by {name}; {RESUMES}"]
    assert "Traceback" not in err
    (run,) = runs_in(tmp_path, "stop")
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == f"stopped by {name}; {RESUMES}"
    passes = logged_passes(tmp_path, run.info.run_id)
    assert 1 <= len(passes) < EPOCHS
    (lock,) = (tmp_path / "ckpt").rglob("*.lock")
    claim = Claim.take(lock)
    assert isinstance(claim, Claim), claim  # nobody holds the configuration
    claim.release()

    relaunch = run_cli("run.py", *args)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"resume plain-seed0: run {run.info.run_id} from its last checkpoint" in output(relaunch)
    assert_every_pass_once(tmp_path, "stop", ["plain-seed0"])
    (resumed,) = runs_in(tmp_path, "stop")
    assert "error" not in resumed.data.tags


@pytest.mark.parametrize(
    ("launcher", "group"),
    [
        (["hydra/launcher=basic"], False),
        (["hydra/launcher=batched"], False),
        # passed on to the workers that train; two idle ones are left alone
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=4"], False),
        (["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"], True),  # each gets it
    ],
    ids=["basic", "batched", "joblib", "joblib-group"],
)
def test_a_signalled_sweep_ends_its_runs_and_its_launch_killed(
    tmp_path, slow_root, launcher, group
):
    grid = ["seed=0,1", f"trainer.epochs={EPOCHS}"]
    args = ["-m", *job_args(tmp_path, slow_root, "sweep", *launcher, *grid)]
    with launched(args, tmp_path) as sweep:
        returncode = signal_after_a_pass(sweep, tmp_path, "sweep", signal.SIGTERM, group=group)
    err = (tmp_path / "launcher.err").read_text()
    assert returncode != 0
    (line,) = error_lines(err)
    assert line.endswith(f"stopped by SIGTERM; {RESUMES}"), line
    runs = runs_in(tmp_path, "sweep")
    assert runs  # the basic launcher stops before its second job opens its run
    for run in runs:
        assert run.info.status == "KILLED", run.info.run_name
        assert run.data.tags["error"] == f"stopped by SIGTERM; {RESUMES}"
    (launch,) = runs_in(tmp_path, "sweep", kind="launch")
    assert launch.info.status == "KILLED" and "stopped by SIGTERM" in launch.data.tags["error"]
    (parent,) = runs_in(tmp_path, "sweep", kind="sweep")
    assert parent.info.status == "KILLED"

    relaunch = run_cli("run.py", *args)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert_every_pass_once(tmp_path, "sweep", ["plain-seed0", "plain-seed1"])
    (parent,) = runs_in(tmp_path, "sweep", kind="sweep")
    assert parent.info.status == "FINISHED"
