"""run.py end to end: sweeps into a temporary store, relaunch, kill and resume, failures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import METRICS, history_of, job_args, run_cli, runs_of, write_dataset
from mlflow.tracking import MlflowClient

from hw3.tracking.schema import PROJECT_ROOT


def test_sweep_logs_nested_runs_and_a_relaunch_skips_them(tmp_path, tiny_root):
    grid = ["model=plain,bn", "seed=0,1", "trainer.epochs=2"]
    args = ["-m", *job_args(tmp_path, tiny_root, "sweep", *grid)]
    first = run_cli("run.py", *args)
    assert first.returncode == 0, first.stderr

    (parent,) = runs_of(tmp_path, "sweep", kind="sweep")
    assert parent.info.status == "FINISHED"
    children = runs_of(tmp_path, "sweep")
    assert sorted(r.info.run_name for r in children) == [
        "bn-seed0", "bn-seed1", "plain-seed0", "plain-seed1",
    ]  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert run.info.run_name == f"{tags['model']}-seed{tags['seed']}"
        assert f"model={tags['model']}" in tags["overrides"]
        assert {"git_commit", "git_dirty", "device", "torch_version", "fingerprint"} <= set(tags)
        assert params["optimizer.lr"] == "0.04" and params["trainer.epochs"] == "2"
        assert params["model.name"] == tags["model"] and "tracking.uri" not in params
        history = history_of(tmp_path, run.info.run_id)
        assert set(history) == METRICS
        assert all([s for s, _ in points] == [1, 2] for points in history.values())
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {".hydra", "model"} <= artifacts
        hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
        assert ".hydra/config.yaml" in hydra_files and ".hydra/overrides.yaml" in hydra_files
        state = torch.load(
            client.download_artifacts(run.info.run_id, "model/state_dict.pt", str(tmp_path)),
            weights_only=True,
        )
        assert "3.weight" in state  # the linear layer after the two blocks and Flatten
    assert len({r.data.tags["fingerprint"] for r in children}) == 4

    again = run_cli("run.py", *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip ") + again.stderr.count("skip ") == 4
    assert len(runs_of(tmp_path, "sweep")) == 4
    assert len(runs_of(tmp_path, "sweep", kind="sweep")) == 1


@pytest.mark.slow
def test_a_killed_job_resumes_in_the_same_run_with_identical_results(tmp_path):
    root = write_dataset(tmp_path / "data", 4000, 500)
    args = job_args(tmp_path, root, "resume", "trainer.epochs=3")
    job = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "run.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=PROJECT_ROOT,
    )
    deadline = time.monotonic() + 240
    try:
        # Kill as soon as pass 1 is logged; the checkpoint comes first, and only then is the
        # store's schema surely complete (opening it earlier would race its creation).
        while not (
            list(tmp_path.glob("ckpt/**/*.pt")) and runs_of(tmp_path, "resume")[0].data.metrics
        ):
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "pass 1 never finished"
            time.sleep(0.05)
        os.kill(job.pid, signal.SIGKILL)
    finally:
        if job.poll() is None:
            job.kill()
        job.wait(timeout=30)
    (killed,) = runs_of(tmp_path, "resume")
    assert killed.info.status == "RUNNING"
    assert [s for s, _ in history_of(tmp_path, killed.info.run_id)["test/acc"]] == [1]

    resumed = run_cli("run.py", *args)
    assert resumed.returncode == 0, resumed.stderr
    (run,) = runs_of(tmp_path, "resume")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    history = history_of(tmp_path, run.info.run_id)
    assert all([s for s, _ in points] == [1, 2, 3] for points in history.values())

    straight = run_cli("run.py", *job_args(tmp_path, root, "straight", "trainer.epochs=3"))
    assert straight.returncode == 0, straight.stderr
    (reference,) = runs_of(tmp_path, "straight")
    expected = history_of(tmp_path, reference.info.run_id)
    for key in METRICS - {k for k in METRICS if k.startswith("time/")}:
        assert history[key] == expected[key], key


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, tiny_root):
    args = [
        "-m",
        *job_args(tmp_path, tiny_root, "faults", "optimizer.lr=0.04,1e5", "trainer.epochs=1"),
    ]
    result = run_cli("run.py", *args)
    assert result.returncode != 0
    runs = {r.data.params["optimizer.lr"]: r for r in runs_of(tmp_path, "faults")}
    assert runs["0.04"].info.status == "FINISHED"
    diverged = runs["100000.0"]
    assert diverged.info.status == "FAILED"
    assert diverged.data.tags["diverged"] == "true" and diverged.data.tags["diverged_pass"] == "1"
    assert "non-finite loss at pass 1" in diverged.data.tags["error"]
    (parent,) = runs_of(tmp_path, "faults", kind="sweep")
    assert parent.info.status == "FAILED"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failing_single_run_exits_with_one_line_and_is_marked_failed(tmp_path, tiny_root):
    result = run_cli("run.py", *job_args(tmp_path, tiny_root, "single", "trainer.device=cuda"))
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert error == (
        "error: plain-seed0 FAILED: trainer.device=cuda but no CUDA GPU is visible; "
        "use trainer.device=cpu"
    )
    (run,) = runs_of(tmp_path, "single")
    assert run.info.status == "FAILED" and "CUDA" in run.data.tags["error"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "error.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
