"""The test support's warm interpreter: a process forked from it is what a new one would be."""

from __future__ import annotations

import os
import signal
import textwrap

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


ENDINGS = {
    "returns": """
        import atexit, sys, threading, time
        atexit.register(print, "atexit handler")
        threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined"))).start()
        sys.stdout = open(sys.stdout.fileno(), "w", closefd=False)  # only the end flushes it
        sys.stdout.write("buffered, unflushed; ")
    """,
    "leaves a pool running": """
        from joblib import Parallel, delayed  # as the parallel launcher does: loky's pool
        print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(2)))
    """,
    "exits with a status": "import sys; print('out'); sys.exit(3)",
    "exits with a message": "import sys; sys.exit('a message')",
    "raises": "raise ValueError('uncaught')",
    "is interrupted": "raise KeyboardInterrupt",
}


@pytest.mark.parametrize("code", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_forked_script_ends_as_a_new_interpreter_does(tmp_path, code):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    forked, new = run_cli(str(script), timeout=60), run_cli(str(script), fresh=True, timeout=60)
    assert (forked.returncode, forked.stdout) == (new.returncode, new.stdout)
    last = [r.stderr.strip().splitlines()[-1:] for r in (forked, new)]
    assert last[0] == last[1]  # a traceback's frames differ: the forked one runs it by runpy


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
