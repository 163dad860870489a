"""What the tests share besides fixtures: tiny IDX datasets, the CLI as a subprocess, stores."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gzip
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import torch
import yaml
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from hw3.engine.data import FashionMNIST, Split
from hw3.engine.files import SYSTEM_DIR, raw_dir
from hw3.engine.train import Measurement
from hw3.tracking.schema import PROJECT_ROOT

IMAGE_SIDE = 28
NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SMOOTHNESS_METRICS = {
    "smoothness/L",
    "smoothness/lr_max",
    "smoothness/u_norm",
    "smoothness/grad_norm",
    "smoothness/loss_range",
    "smoothness/grad_pred",
    "smoothness/beta",
}
# What a pass of the default configuration logs: fit, L̂ along one direction, times.
BASE_METRICS = {
    "train/loss",
    "train/loss_running",
    "train/acc",
    "test/loss",
    "test/acc",
    "time/train_pass_s",
    "time/smoothness_s",
    "time/eval_s",
}
METRICS = BASE_METRICS | SMOOTHNESS_METRICS
PROJECT_DATA = PROJECT_ROOT / "data"
# The experiment's measurement, as conf/smoothness/default.yaml sets it: L̂ along one direction.
L_HAT = Measurement(
    directions=1,
    scales=(1.0,),
    sharpness=False,
    sharpness_examples=4096,
    sharpness_iters=20,
    sharpness_tol=1e-3,
)
WAIT_S = 300  # the longest any one step of a test may wait for a process or a store
EPOCHS = 3  # passes of the tests' CLI runs
CONFIGS = ["bn-seed0", "bn-seed1", "plain-seed0", "plain-seed1"]  # a plain,bn × seeds 0,1 sweep
T = TypeVar("T")
# What a probe of a process's progress may raise while the store or file it reads is not there
# yet or is restarting (requests' connection errors are OSErrors; SQLite's, SQLAlchemy errors).
NOT_YET = (OSError, MlflowException, SQLAlchemyError)
H = TypeVar("H", dict[str, list[tuple[int, float]]], list[dict[str, float]])


# --- tiny datasets ------------------------------------------------------------------------------


def model_params(name: str) -> dict[str, Any]:
    """The parameters conf/model/NAME.yaml gives variant `name` (none for plain, bn, stride)."""
    config = yaml.safe_load((PROJECT_ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    return {k: v for k, v in config.items() if k not in ("defaults", "name")}


def idx_bytes(array: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic 0x0000080N, N big-endian dims, the data."""
    assert array.dtype == torch.uint8
    header = struct.pack(">I", 0x0800 | array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.contiguous().numpy().tobytes()


@dataclass(frozen=True)
class TinyRaw:
    """The four raw arrays of a tiny FashionMNIST-shaped dataset (uint8 images and labels)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def files(self) -> dict[str, bytes]:
        """File name → IDX bytes, under the official names."""
        arrays = (self.train_x, self.train_y, self.test_x, self.test_y)
        return {name: idx_bytes(a) for name, a in zip(NAMES, arrays, strict=True)}

    def md5s(self) -> dict[str, str]:
        """File name → MD5 of the (decompressed) IDX bytes: a `checksums=` table."""
        return {name: hashlib.md5(b).hexdigest() for name, b in self.files().items()}


def make_raw(seed: int = 0, n_train: int = 20, n_test: int = 10) -> TinyRaw:
    """Random uint8 images and labels in 0..9, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, IMAGE_SIDE, IMAGE_SIDE), generator=g, dtype=torch.uint8)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)

    return TinyRaw(images(n_train), labels(n_train), images(n_test), labels(n_test))


def learnable_raw(n_train: int, n_test: int, seed: int = 0) -> TinyRaw:
    """Noise images with a bright stripe whose row says the class: a net learns it in a pass."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 60, (n, IMAGE_SIDE, IMAGE_SIDE), generator=g)
        for c in range(10):
            images[labels == c, 2 * c + 4 : 2 * c + 6, 4:24] += 180
        return images.to(torch.uint8), labels.to(torch.uint8)

    return TinyRaw(*split(n_train), *split(n_test))


def write_raw(folder: Path, raw: TinyRaw, *, gz: bool = False) -> dict[str, Path]:
    """Write the four files into `folder` (as `name.gz` when `gz`); name → path written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in raw.files().items():
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
        written[name] = path
    return written


def write_dataset(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A learnable synthetic FashionMNIST in torchvision's layout under `root`; returns `root`."""
    write_raw(raw_dir(root), learnable_raw(n_train, n_test, seed))
    return root


def synthetic_data(n_train: int = 256, n_test: int = 128, seed: int = 0) -> FashionMNIST:
    """Preprocessed-looking random splits (standard normal images, uniform labels)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.randn(n, 1, IMAGE_SIDE, IMAGE_SIDE, generator=g)
        return Split(x, torch.randint(0, 10, (n,), generator=g))

    return FashionMNIST(train=split(n_train), test=split(n_test), mean=0.0, std=1.0)


def real_data_location(tmp_root: Path) -> tuple[Path, Path | None] | None:
    """(root, system_dir) to load the official files from, or None where there are none."""
    if all((SYSTEM_DIR / f"{name}.gz").is_file() for name in NAMES):
        return tmp_root, SYSTEM_DIR  # decompressed into a fresh root on the way
    raw = raw_dir(PROJECT_DATA)
    if all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in NAMES):
        return PROJECT_DATA, None
    return None


def without_real_data(reason: str) -> NoReturn:
    """Skip a test that needs the official files; fail it where $HW3_REQUIRE_DATA=1 (CI)."""
    if os.environ.get("HW3_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason}, and HW3_REQUIRE_DATA=1 asks for them")
    pytest.skip(reason)


# --- the command line ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range
    (32768 and up on Linux, 49152 and up elsewhere): while a test keeps it free, no outgoing
    connection can be handed it as its own port."""
    for port in random.sample(range(10_000, 32_768), 100):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no free port in 10000-32767")


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


def store_uri(where: Path | str) -> str:
    """A tracking URI: `where` itself, or the SQLite store a test keeps in folder `where`."""
    return f"sqlite:///{where / 'mlflow.db'}" if isinstance(where, Path) else where


@functools.cache
def empty_store() -> Path:
    """An empty SQLite store with MLflow's whole schema, made once per test process."""
    folder = Path(tempfile.mkdtemp(prefix="hw3-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    MlflowClient(store_uri(folder)).search_experiments(max_results=1)  # migrates it
    return folder / "mlflow.db"


def seeded_store(tmp: Path) -> str:
    """The URI of the store in folder `tmp`, a copy of `empty_store` if it has none yet: a
    schema copied in milliseconds instead of migrated in a second or more. (A test of how a
    new store is created passes its own `uri` instead.)"""
    db = tmp / "mlflow.db"
    if not db.exists():
        tmp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store(), db)
    return store_uri(tmp)


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


def clone_runs(db: Path, run_id: str, start_times: Iterable[int]) -> list[str]:
    """Copies of run `run_id` (its row and its tags) in the SQLite store `db`, one per start
    time, written by SQL: MLflow's client takes about 0.1 s a run here, too slow for a test of
    more than a page of runs. Their ids."""
    with sqlite3.connect(db) as con:
        columns = [row[1] for row in con.execute("PRAGMA table_info(runs)")]
        chosen = ", ".join("?" if c in ("run_uuid", "start_time") else c for c in columns)
        insert = (
            f"INSERT INTO runs ({', '.join(columns)}) SELECT {chosen} FROM runs WHERE run_uuid = ?"
        )
        order = [c for c in columns if c in ("run_uuid", "start_time")]
        ids = []
        for start in start_times:
            new = uuid.uuid4().hex
            given = {"run_uuid": new, "start_time": start}
            con.execute(insert, [*(given[c] for c in order), run_id])
            con.execute(
                "INSERT INTO tags (key, value, run_uuid) SELECT key, value, ? FROM tags "
                "WHERE run_uuid = ?",
                (new, run_id),
            )
            ids.append(new)
    return ids


def runs_of(where: Path | str, experiment: str, kind: str = "train") -> list:
    """The runs of `kind` (train, sweep) in `experiment` of the store at `where` (none while
    the experiment does not exist)."""
    client = MlflowClient(store_uri(where))
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], f"tags.kind = '{kind}'")


def history_of(where: Path | str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric of run `run_id` as its sorted (step, value) points."""
    client = MlflowClient(store_uri(where))
    keys = client.get_run(run_id).data.metrics
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys
    }


def untimed(history: H) -> H:
    """A history without the wall-clock `time/*` metrics: what reruns reproduce bit for bit.

    Either a store's (`history_of`: metric → points) or the engine's (a dict of metrics per pass).
    """
    if isinstance(history, dict):
        return {k: v for k, v in history.items() if not k.startswith("time/")}
    return [untimed(metrics) for metrics in history]


class Interrupt(Exception):
    """Raised by an `on_pass_end` callback to stop training between passes, as a kill would."""


# --- processes ----------------------------------------------------------------------------------


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


def stat_fields(pid: int | str) -> list[str]:
    """Fields of /proc/pid/stat after the command name (state, ppid, pgrp, ...); [] if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int | str) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    return stat_fields(pid)[:1] not in ([], ["Z"])


def group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is still in process group `pgid`."""
    pids = (p.name for p in Path("/proc").iterdir() if p.name.isdigit())
    return any(f[:1] != ["Z"] and f[2:3] == [str(pgid)] for f in map(stat_fields, pids))


def stop(proc: subprocess.Popen) -> None:
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
) -> Iterator[subprocess.Popen]:
    """`python run.py args` (of `project`) in its own process group, output in
    tmp/<name>.{out,err}; killed with its group when the block ends."""
    with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(project / "run.py"), *args],
            stdout=out,
            stderr=err,
            cwd=project,
            env=cli_env(env),
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop(proc)


class Server:
    """A real `mlflow server` on 127.0.0.1 over a SQLite store in `tmp`, stopped and restarted."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until GET /health answers."""
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.tmp / 'server.db'}",
            "--artifacts-destination",
            str(self.tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # Its job-execution feature would start seven more processes on a 2-core machine.
        env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.tmp / "server.log", "a") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=log, env=env, start_new_session=True
            )
        try:
            wait_for("the tracking server to answer /health", self._healthy, self.proc)
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"http://{self.address}/health", timeout=2):
            return True

    def stop(self) -> None:
        """Kill it, as a crash would."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def _take_port(self) -> socket.socket:
        """A socket listening on the server's port; raises while something still holds it."""
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen()
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.5)
        return listener

    def hang_up_on_a_caller(self, sweep: subprocess.Popen) -> None:
        """While it is down, take its port until a job calls, and hang up on that request."""
        # Once seen on a loaded machine: the port still held just after the server was gone.
        with wait_for("the stopped server's port to be free", self._take_port, sweep) as listener:

            def accept() -> socket.socket | None:
                with suppress(TimeoutError):
                    return listener.accept()[0]
                return None

            wait_for("a job to call the stopped server", accept, sweep).close()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def logged_passes(where: Path | str, run_id: str) -> list[int]:
    """The passes run `run_id` has logged (steps of test/acc, the last metric of a pass)."""
    client = MlflowClient(store_uri(where))
    return sorted(m.step for m in client.get_metric_history(run_id, "test/acc"))


def kill_when_logged(proc: subprocess.Popen, where: Path | str, experiment: str, passes: int = 1):
    """SIGKILL `proc`'s process group once one of the experiment's runs logged `passes` passes;
    return that run (as it was just before the kill)."""

    def logged():
        runs = runs_of(where, experiment)
        return next((r for r in runs if len(logged_passes(where, r.info.run_id)) >= passes), None)

    run = wait_for(f"a run of {experiment} to log {passes} pass(es)", logged, proc)
    stop(proc)
    return run


def assert_complete(where: Path | str, experiment: str) -> dict[str, Run]:
    """The sweep's four runs, FINISHED under its one FINISHED parent, every metric logged at
    passes 1..EPOCHS exactly once, and nothing in the Default experiment; by run name."""
    (parent,) = runs_of(where, experiment, kind="sweep")
    assert parent.info.status == "FINISHED"
    runs = runs_of(where, experiment)
    assert sorted(r.info.run_name for r in runs) == CONFIGS
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = history_of(where, run.info.run_id)
        assert set(history) == METRICS
        for key, points in history.items():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), (run.info.run_name, key)
    assert MlflowClient(store_uri(where)).search_runs(["0"]) == []
    return {r.info.run_name: r for r in runs}


def override(args: list[str], key: str, value: object) -> list[str]:
    """`args` with `key=value` in place of the override of `key`."""
    return [f"{key}={value}" if a.startswith(f"{key}=") else a for a in args]


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
