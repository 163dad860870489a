"""Scaling out without losing anything: parallel jobs, a real tracking server that restarts, a
job killed mid-sweep; and what must never be recorded or exposed."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from support.cli import error_lines, job_args, run_cli, stand_in_project
from support.processes import WAIT_S, alive, launched, wait_for
from support.runs import EPOCHS, METRICS, PAIR, PAIR_SWEEP, assert_complete, history_of, runs_in
from support.server import Server

from hw3.tracking.record import log_values
from hw3.tracking.schema import PROJECT_ROOT
from hw3.tracking.store import Store, redact

PARALLEL = [
    "hydra/launcher=parallel",
    "hydra.launcher.n_jobs=4",
    "model=plain,bn",
    "seed=0,1",
    f"trainer.epochs={EPOCHS}",
]
# Two jobs at once where the number that write at once is not the point (PAIR's runs); on
# slow_root, so that the jobs are still training when a test stops the server or kills one.
TWO_PARALLEL = [
    "hydra/launcher=parallel",
    "hydra.launcher.n_jobs=2",
    *PAIR_SWEEP,
    f"trainer.epochs={EPOCHS}",
]


def points_logged(where: Path | str, experiment: str) -> int:
    """How many metric points the experiment's training runs hold."""
    return sum(
        len(points)
        for run in runs_in(where, experiment)
        for points in history_of(where, run.info.run_id).values()
    )


@pytest.mark.slow
def test_four_parallel_jobs_on_sqlite_lose_nothing(tmp_path, tiny_root):
    result = run_cli("run.py", "-m", *job_args(tmp_path, tiny_root, "parallel", *PARALLEL))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(tmp_path, "parallel")


@pytest.mark.slow
def test_parallel_jobs_ride_out_server_restarts_and_record_no_credentials(tmp_path, slow_root):
    with Server(tmp_path) as server:
        uri = f"http://user:secret@{server.address}"  # MLflow sends them; nothing may keep them
        args = ["-m", *job_args(tmp_path, slow_root, "served", *TWO_PARALLEL, uri=uri)]
        plain = f"http://{server.address}"
        with launched(args, tmp_path, {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}) as sweep:
            # Down once while the jobs start (their first calls), once while they log passes.
            wait_for("the sweep's parent run", lambda: runs_in(plain, "served", "sweep"), sweep)
            server.stop()
            server.hang_up_on_a_caller(sweep)
            server.start()
            wait_for(
                "a first pass logged",
                lambda: any(r.data.metrics for r in runs_in(plain, "served")),
                sweep,
            )
            logged_before = points_logged(plain, "served")
            server.stop()
            server.hang_up_on_a_caller(sweep)
            server.start()
            returncode = sweep.wait(timeout=WAIT_S)
        assert returncode == 0, (tmp_path / "launcher.err").read_text()[-3000:]
        assert logged_before < len(PAIR) * len(METRICS) * EPOCHS  # the restart was mid-sweep
        runs = assert_complete(plain, "served", PAIR)

        client = MlflowClient(plain)
        (parent,) = runs_in(plain, "served", kind="sweep")
        for run in [*runs.values(), parent]:
            recorded = [*run.data.params.values(), *run.data.tags.values()]
            assert not [v for v in recorded if "secret" in v], run.info.run_name
        for run in runs.values():
            assert {".hydra", "model"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
            hydra = Path(client.download_artifacts(run.info.run_id, ".hydra", str(tmp_path)))
            assert {p.name for p in hydra.iterdir()} >= {"config.yaml", "overrides.yaml"}
            assert not [p.name for p in hydra.iterdir() if "secret" in p.read_text()]
            assert "***@" in (hydra / "overrides.yaml").read_text()

        # What a retry after a lost response does: the pass's batch again, same timestamp.
        run_id = runs["plain-seed0"].info.run_id
        before = history_of(plain, run_id)
        first = {k: client.get_metric_history(run_id, k)[0] for k in METRICS}
        (stamp,) = {m.timestamp for m in first.values()}  # one timestamp for a pass's batch
        metrics = {k: m.value for k, m in first.items()}
        store = Store(plain, client)
        log_values(store, run_id, metrics=metrics, step=1, timestamp_ms=stamp)
        assert history_of(plain, run_id) == before


@pytest.mark.slow
def test_a_job_killed_in_a_parallel_sweep_is_resumed_by_the_relaunch(tmp_path, slow_root):
    args = ["-m", *job_args(tmp_path, slow_root, "killed", *TWO_PARALLEL)]

    def logged_pass() -> Run | None:
        # A checkpoint exists only after a pass, when the store's schema is surely complete.
        if not list(tmp_path.glob("ckpt/**/*.pt")):
            return None
        runs = runs_in(tmp_path, "killed")
        return next((r for r in runs if r.data.metrics and "pid" in r.data.tags), None)

    pids: list[int] = []
    try:
        with launched(args, tmp_path) as sweep:
            victim = wait_for("a job to log its first pass", logged_pass, sweep)
            assert victim.data.tags["host"] == socket.gethostname()
            os.kill(int(victim.data.tags["pid"]), signal.SIGKILL)
            returncode = sweep.wait(timeout=WAIT_S)
        runs = runs_in(tmp_path, "killed")
        pids = [int(r.data.tags["pid"]) for r in runs if "pid" in r.data.tags]
        # No job of the aborted sweep may go on logging beside the relaunch's.
        wait_for("the aborted sweep's jobs to be gone", lambda: not any(map(alive, pids)))
    finally:
        for pid in filter(alive, pids):
            os.kill(pid, signal.SIGKILL)

    err = (tmp_path / "launcher.err").read_text()
    assert returncode == 1, err[-3000:]
    (line,) = error_lines(err)
    assert "process died" in line and "relaunch the same command" in line
    assert "Traceback" not in err
    (parent,) = runs_in(tmp_path, "killed", kind="sweep")
    assert parent.info.status == "FAILED"
    killed = next(r for r in runs if r.info.run_id == victim.info.run_id)
    assert killed.info.status == "RUNNING"  # as the kill left it: nothing ran to close it
    assert len(history_of(tmp_path, killed.info.run_id)["test/acc"]) < EPOCHS

    relaunch = run_cli("run.py", *args)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    runs = assert_complete(tmp_path, "killed", PAIR)
    assert runs[victim.info.run_name].info.run_id == victim.info.run_id


@pytest.mark.slow
def test_a_server_down_longer_than_the_retries_fails_the_job_in_one_line(tmp_path, slow_root):
    root = slow_root  # a pass takes a moment: time to stop the server
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}
    with Server(tmp_path) as server:
        uri = f"http://{server.address}"
        # Pass 2 is trained and checkpointed but cannot be logged: the relaunch logs it on.
        args = job_args(tmp_path, root, "down", f"trainer.epochs={EPOCHS}", uri=uri)

        def logged_a_pass() -> Run | None:
            return next((r for r in runs_in(uri, "down") if r.data.metrics), None)

        with launched(args, tmp_path, retries) as job:
            run = wait_for("a first pass logged", logged_a_pass, job)
            server.stop()
            returncode = job.wait(timeout=WAIT_S)
        err = (tmp_path / "launcher.err").read_text()
        assert returncode == 1, err[-3000:]
        (line,) = error_lines(err)
        stopped = (
            f"error: plain-seed0 stopped: the tracking store {uri} did not answer (",
            "); relaunch the same command once it does: the run resumes from its last pass",
        )
        assert line.startswith(stopped[0]) and line.endswith(stopped[1]), line
        assert len(line) > sum(map(len, stopped)), line  # MLflow's reason between the brackets
        assert "Traceback" not in err

        server.start()
        relaunch = run_cli("run.py", *args)
        assert relaunch.returncode == 0, relaunch.stderr[-3000:]
        (resumed,) = runs_in(uri, "down")
        assert (resumed.info.run_id, resumed.info.status) == (run.info.run_id, "FINISHED")
        for key, points in history_of(uri, run.info.run_id).items():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), key


def test_every_torch_load_is_weights_only():
    calls = []
    for path in [*(PROJECT_ROOT / "hw3").rglob("*.py"), *PROJECT_ROOT.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            func = getattr(node, "func", None)
            if isinstance(func, ast.Attribute) and ast.unparse(func) == "torch.load":
                calls.append((path.name, node))
    assert {name for name, _ in calls} >= {"train.py"}  # read_checkpoint, the one reader
    for name, call in calls:
        kwargs = {k.arg: k.value for k in call.keywords}
        assert getattr(kwargs.get("weights_only"), "value", None) is True, name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:secret@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("tracking.uri=https://token@host/path", "tracking.uri=https://***@host/path"),
        (r"uri=http\://user\:secret@127.0.0.1\:5000", r"uri=http\://***@127.0.0.1\:5000"),
        ("sqlite:////tmp/a@b/mlflow.db model=bn", "sqlite:////tmp/a@b/mlflow.db model=bn"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ],
)
def test_credentials_in_uris_are_redacted(text, expected):
    assert redact(text) == expected


@pytest.mark.slow  # an interpreter that imports MLflow
def test_mlflow_telemetry_is_off_in_the_jobs(tmp_path):
    # Outside pytest and CI (which MLflow detects), only hw3 turns it off.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT)}
    code = (
        "import hw3.tracking.store; from mlflow.telemetry.utils import is_telemetry_disabled; "
        "print(is_telemetry_disabled())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.stdout.strip() == "True", result.stderr[-2000:]


@pytest.mark.parametrize(("host", "bound"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_the_server_script_binds_to_loopback_unless_host_is_set(tmp_path, host, bound):
    files = ("scripts/mlflow-server", "scripts/setup", "pyproject.toml")
    project, venv = stand_in_project(tmp_path, files), tmp_path / "venv" / "bin"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HW3_VENV": str(venv.parent)}
    if host is not None:
        env["HOST"] = host
    result = subprocess.run(
        ["bash", str(project / "scripts" / "mlflow-server")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    args = result.stdout.split()
    assert args[:2] == ["mlflow", "server"]
    assert args[args.index("--host") + 1] == bound and args[args.index("--port") + 1] == "5000"
    store = f"sqlite:///{project}/mlruns/mlflow.db"
    assert args[args.index("--backend-store-uri") + 1] == store
