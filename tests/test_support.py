"""The test support's warm interpreter: a process forked from it is what a new one would be."""

from __future__ import annotations

import os
import signal

import pytest
from support.cli import Forked, job_args, run_cli
from support.processes import launched, wait_for

pytestmark = pytest.mark.slow  # starts run.py


def test_a_forked_run_prints_and_exits_as_a_new_interpreter_does(tmp_path, tiny_root):
    args = job_args(tmp_path, tiny_root, "support", "trainer.epochs=0")  # refused: one line
    forked, new = run_cli("run.py", *args), run_cli("run.py", *args, fresh=True)
    assert forked.returncode == new.returncode == 1
    assert (forked.stdout, forked.stderr) == (new.stdout, new.stderr)
    assert forked.stderr.strip().startswith("error: invalid trainer.epochs=0")


def test_a_forked_run_is_a_session_of_its_own_and_reports_the_signal_that_ended_it(
    tmp_path, slow_root
):
    args = job_args(tmp_path, slow_root, "support", "trainer.epochs=100")
    with launched(args, tmp_path) as job:
        assert isinstance(job, Forked)
        assert os.getsid(job.pid) == os.getpgid(job.pid) == job.pid
        logs = [tmp_path / "launcher.out", tmp_path / "launcher.err"]
        wait_for(
            "the job's first pass", lambda: any("pass 1/100" in p.read_text() for p in logs), job
        )
        os.killpg(job.pid, signal.SIGKILL)
        assert job.wait(timeout=60) == -signal.SIGKILL
