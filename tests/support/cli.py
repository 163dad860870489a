"""The project's scripts as a user runs them: processes, their overrides, their output.

A process of one of this checkout's scripts (run.py, analyze.py, a benchmark) is forked from a
warm interpreter (warm.py), one per test process, which has imported torch, MLflow and Hydra
once: a real process with its own pid, session, files, environment and exit status, seconds
faster to start. A script of a copy of the project is forked from a second warm interpreter that
has imported the libraries but not hw3, so that the copy's own code runs. A changed PYTHONPATH
or `fresh=True` gets a new interpreter, as a user's shell would.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from hw3.tracking.schema import PROJECT_ROOT
from support.stores import seeded_store


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: ours without $MLFLOW_TRACKING_URI, then `env`."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})


class Forked:
    """A process the warm interpreter forked: the part of `subprocess.Popen` the tests use."""

    def __init__(self, args: list[str], conn: socket.socket) -> None:
        self.args, self._conn = args, conn
        self._lines = conn.makefile("rb", buffering=0)  # unbuffered: `select` sees what is left
        self.pid: int = json.loads(self._lines.readline())["pid"]
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """Its exit status if it has ended (negative: the signal that ended it), else None."""
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._ended()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Its exit status, once it has ended; TimeoutExpired after `timeout` seconds."""
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._ended()
        assert self.returncode is not None
        return self.returncode

    def _ended(self) -> None:
        line = self._lines.readline()
        assert line, f"the warm interpreter's monitor of pid {self.pid} died"
        self.returncode = json.loads(line)["exit"]
        self._conn.close()


_STARTING = threading.Lock()  # threads that start runs at once share one warm interpreter


def warm_socket(project: bool) -> str:
    """The socket of this test process's warm interpreter with this checkout's hw3 imported (else
    the libraries only: for a copy of the project), started on first use."""
    with _STARTING:
        return _start_warm(project)


@functools.cache
def _start_warm(project: bool) -> str:
    """Start a warm interpreter (`warm_socket`); its socket."""
    folder = Path(tempfile.mkdtemp(prefix="hw3-warm-"))
    path = str(folder / "socket")
    only = [] if project else ["--libraries-only"]
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("warm.py")), path, *only],
        stdout=subprocess.PIPE,
        env=cli_env(),
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    atexit.register(server.kill)
    assert server.stdout is not None and server.stdout.readline() == b"ready\n", "warm.py failed"
    return path


def start(
    script: str,
    args: Sequence[str],
    stdout: IO,
    stderr: IO,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    project: Path = PROJECT_ROOT,
    fresh: bool = False,
) -> subprocess.Popen | Forked:
    """Start `python <project>/<script> args…` in a session of its own, from the project's root
    unless `cwd`: forked warm where it may be (see the module's docstring), else a new one."""
    command = [sys.executable, str(project / script), *args]
    full_env = cli_env(env)
    if fresh or "PYTHONPATH" in (env or {}):
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd or project,
            env=full_env,
            start_new_session=True,
        )
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(warm_socket(project == PROJECT_ROOT))
    socket.send_fds(conn, [b"F"], [stdout.fileno(), stderr.fileno()])
    request = {
        "script": command[1],
        "args": command[2:],
        "cwd": str(cwd or project),
        "env": full_env,
    }
    conn.sendall(json.dumps(request).encode() + b"\n")
    return Forked(command, conn)


def run_cli(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: int = 300,
    cwd: Path | None = None,
    project: Path = PROJECT_ROOT,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run `python <project>/<script> args…` to its end (`start`); what it printed, as text."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = start(script, args, out, err, env=env, cwd=cwd, project=project, fresh=fresh)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(proc.args, returncode, out.read(), err.read())


def config_args(
    tmp: Path, root: Path, experiment: str, *extra: str, uri: str | None = None
) -> list[str]:
    """Config overrides that keep what a job writes inside `tmp` (its store too, seeded by
    `seeded_store`, unless `uri`)."""
    return [
        f"data.root={root}",
        "data.verify=false",
        "trainer.device=cpu",
        f"trainer.checkpoint_dir={tmp / 'ckpt'}",
        f"tracking.uri={uri or seeded_store(tmp)}",
        f"tracking.experiment={experiment}",
        *extra,
    ]


def job_args(
    tmp: Path, root: Path, experiment: str, *extra: str, uri: str | None = None
) -> list[str]:
    """`config_args` and Hydra's own folders, also inside `tmp`: a CLI run's overrides."""
    hydra_dirs = [f"hydra.run.dir={tmp / 'outputs'}", f"hydra.sweep.dir={tmp / 'multirun'}"]
    return [*config_args(tmp, root, experiment, uri=uri), *hydra_dirs, *extra]


def override(args: list[str], key: str, value: object) -> list[str]:
    """`args` with `key=value` in place of the override of `key`."""
    return [f"{key}={value}" if a.startswith(f"{key}=") else a for a in args]


def output(result: subprocess.CompletedProcess) -> str:
    """What a CLI run printed (Hydra logs to stderr, hw3's job log to stdout or stderr)."""
    return result.stdout + result.stderr


def error_lines(text: str) -> list[str]:
    """The `error:` lines in a CLI run's output."""
    return [line for line in text.splitlines() if line.startswith("error:")]


_SKIPPED = re.compile(r"skip (\S+): already FINISHED as run (\w+) ")


def skipped(text: str) -> list[tuple[str, str]]:
    """(job name, run id) of each job a launch skipped as already FINISHED, in sorted order."""
    return sorted(_SKIPPED.findall(text))


def stand_in_project(tmp: Path, files: Sequence[str]) -> Path:
    """The project's `files` in tmp/project, with no data set-up to do, and a venv tmp/venv
    whose pip does nothing and whose mlflow prints `mlflow` and its arguments instead of serving:
    for testing the real scripts cheaply."""
    root = tmp / "project"
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes((PROJECT_ROOT / name).read_bytes())
    (root / "data" / "FashionMNIST" / "raw").mkdir(parents=True)
    venv = tmp / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(
        f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && exit 0\nexec {sys.executable} "$@"\n'
    )
    (venv / "mlflow").write_text('#!/bin/sh\necho "mlflow $@"\n')
    for exe in (venv / "python", venv / "mlflow"):
        exe.chmod(0o755)
    return root
