"""run.py and analyze.py as a user runs them: subprocesses, their overrides, their output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hw3.tracking.schema import PROJECT_ROOT
from support.stores import seeded_store


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: ours without $MLFLOW_TRACKING_URI, then `env`."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | (env or {})


def run_cli(
    script: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: int = 300,
    cwd: Path | None = None,
    project: Path = PROJECT_ROOT,
) -> subprocess.CompletedProcess:
    """Run `python <project>/<script> args…` (from the project's root unless `cwd`); `project`
    is this checkout unless a test runs a copy of it."""
    return subprocess.run(
        [sys.executable, str(project / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
        cwd=cwd or project,
    )


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
