"""Processes under test: waiting on them, launching run.py in its own group, killing groups."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import pytest
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from hw3.tracking.claim import process_alive, process_stat
from hw3.tracking.schema import PROJECT_ROOT
from support.cli import Forked, start
from support.runs import logged_passes, runs_in

WAIT_S = 300  # the longest any one step of a test may wait for a process or a store
# What a probe of a process's progress may raise while the store or file it reads is not there
# yet or is restarting (requests' connection errors are OSErrors; SQLite's, SQLAlchemy errors).
NOT_YET = (OSError, MlflowException, SQLAlchemyError)
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], proc: subprocess.Popen | None = None) -> T:
    """Poll `probe` until it returns something truthy; fail naming `what` if `proc` ends first.

    A probe that raises NOT_YET (a store not created yet, a server restarting, a file not
    written yet) counts as not yet; any other error is a broken probe and fails at once.
    """
    deadline, last = time.monotonic() + WAIT_S, None
    while True:
        try:
            if result := probe():
                return result
        except NOT_YET as err:
            last = err
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process ended first (exit {proc.returncode}; {last!r})")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT_S} s ({last!r})")
        time.sleep(0.25)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (the claims' own test of liveness)."""
    return process_alive(pid, "")


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is still in process group `pgid`."""
    pids = (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
    return any(f[:1] != ["Z"] and f[2:3] == [str(pgid)] for f in map(process_stat, pids))


def stop(proc: subprocess.Popen | Forked) -> None:
    """Kill `proc` and its process group (a launcher's workers, a server's), reap it, and wait
    until every member is gone: a server's uvicorn child holds the port until it has exited."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for(f"process group {proc.pid} to be gone", lambda: not group_alive(proc.pid))


@contextmanager
def launched(
    args: list[str],
    tmp: Path,
    env: dict[str, str] | None = None,
    name: str = "launcher",
    project: Path = PROJECT_ROOT,
) -> Iterator[subprocess.Popen | Forked]:
    """`python run.py args` (of `project`; `cli.start`) in its own process group, output in
    tmp/<name>.{out,err}; killed with its group when the block ends."""
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = start("run.py", args, out, err, env=env, project=project)
    try:
        yield proc
    finally:
        stop(proc)


def kill_when_logged(
    proc: subprocess.Popen, where: Path | str, experiment: str, passes: int = 1
) -> Run:
    """SIGKILL `proc`'s process group once one of the experiment's runs logged `passes` passes;
    return that run (as it was just before the kill)."""

    def logged() -> Run | None:
        runs = runs_in(where, experiment)
        return next((r for r in runs if len(logged_passes(where, r.info.run_id)) >= passes), None)

    run = wait_for(f"a run of {experiment} to log {passes} pass(es)", logged, proc)
    stop(proc)
    return run
