"""A FINISHED run means "this configuration, computed by this code, on these data": results
never mix versions, never double, and never collide across stores (real stores and processes)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support.cli import job_args, output, override, run_cli
from support.data import write_dataset
from support.processes import kill_when_logged, launched, wait_for
from support.runs import EPOCHS, METRICS, history_of, logged_passes, runs_in
from support.stores import store_uri

from hw3.engine.files import OFFICIAL_MD5, raw_dir
from hw3.tracking.schema import PROJECT_ROOT

pytestmark = pytest.mark.slow  # real CLI runs, a few seconds each

UNTIMED = sorted(k for k in METRICS if not k.startswith("time/"))


def only_run(where: Path | str, experiment: str):
    """The experiment's single training run."""
    (run,) = runs_in(where, experiment)
    return run


# --- 1. the engine's code is part of the fingerprint ---------------------------------------------


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The project's code and config, copied: a test may edit its engine."""
    copy = tmp_path / "project"
    for name in ("hw3", "conf"):
        shutil.copytree(
            PROJECT_ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("run.py", "analyze.py"):
        shutil.copy(PROJECT_ROOT / name, copy / name)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    """Replace `old` (which must be there) by `new` in the file at `path`."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_an_engine_change_reruns_and_other_changes_do_not(tmp_path, tiny_root, project_copy):
    args = ["-m", *job_args(tmp_path, tiny_root, "code", "seed=0,1", "trainer.epochs=1")]
    first = run_cli("run.py", *args, project=project_copy)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {r.info.run_id: r.data.tags["engine_version"] for r in runs_in(tmp_path, "code")}
    assert len(before) == 2 and len(set(before.values())) == 1

    # Comments, docstrings and other layers do not change what is computed: skipped.
    training = project_copy / "hw3" / "engine" / "train.py"
    edit(training, '"""Train one run of `model`', '"""Train (reworded) one run of `model`')
    edit(training, "    dev = resolve_device", "    # a new comment\n    dev = resolve_device")
    tracking = project_copy / "hw3" / "tracking" / "training.py"
    edit(tracking, "PROGRESS = (", "PROGRESS = (  # shown\n")
    same = run_cli("run.py", *args, project=project_copy)
    assert same.returncode == 0, same.stderr[-3000:]
    assert output(same).count("already FINISHED") == 2
    assert {r.info.run_id for r in runs_in(tmp_path, "code")} == set(before)

    # What is computed changes: every seed reruns, the old seeds too, with one more seed.
    running_loss = "self.step.loss_sum.item() / int(self.step.steps)"
    edit(training, running_loss, f"2 * {running_loss}")
    args[-2] = "seed=0,1,2"
    changed = run_cli("run.py", *args, project=project_copy)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "already FINISHED" not in output(changed)
    runs = runs_in(tmp_path, "code")
    new = [r for r in runs if r.info.run_id not in before]
    assert sorted(r.data.tags["seed"] for r in new) == ["0", "1", "2"]
    (version,) = {r.data.tags["engine_version"] for r in new}
    assert version != next(iter(before.values()))
    key = "train/loss_running"
    old = {r.data.tags["seed"]: r.data.metrics[key] for r in runs if r.info.run_id in before}
    for run in (r for r in new if r.data.tags["seed"] in old):
        assert run.data.metrics[key] == pytest.approx(2 * old[run.data.tags["seed"]], rel=1e-6)


def test_a_run_killed_under_other_engine_code_is_not_resumed(tmp_path, slow_root, project_copy):
    args = job_args(tmp_path, slow_root, "killed", f"trainer.epochs={EPOCHS}")
    with launched(args, tmp_path, project=project_copy) as job:
        killed = kill_when_logged(job, tmp_path, "killed")
    passes_killed = logged_passes(tmp_path, killed.info.run_id)
    running_loss = "self.step.loss_sum.item() / int(self.step.steps)"
    edit(project_copy / "hw3" / "engine" / "train.py", running_loss, f"{running_loss} + 0.0")

    relaunch = run_cli("run.py", *args, project=project_copy)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert f"not resuming run {killed.info.run_id} of plain-seed0: engine_version" in output(
        relaunch
    )
    runs = {r.info.run_id: r for r in runs_in(tmp_path, "killed")}
    old = runs.pop(killed.info.run_id)
    (new,) = runs.values()
    assert old.info.status == "KILLED" and "engine_version" in old.data.tags["superseded"]
    assert new.info.status == "FINISHED"
    assert logged_passes(tmp_path, new.info.run_id) == list(range(1, EPOCHS + 1))
    assert logged_passes(tmp_path, old.info.run_id) == passes_killed  # left as it was


# --- 2. one live process per run -----------------------------------------------------------------


def test_a_second_launch_skips_a_run_another_process_trains(tmp_path, slow_root):
    args = job_args(tmp_path, slow_root, "twice", f"trainer.epochs={EPOCHS}")
    with launched(args, tmp_path, name="first") as first:
        # Paused between passes (just after logging one, so not inside a store write), it stays
        # alive and cannot finish while the second launch looks at its run, however slow that is.
        logs = [tmp_path / "first.out", tmp_path / "first.err"]
        wait_for("the first pass", lambda: any("pass 1/" in f.read_text() for f in logs), first)
        os.killpg(first.pid, signal.SIGSTOP)
        (run,) = runs_in(tmp_path, "twice")
        try:
            second = run_cli("run.py", *args)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert second.returncode == 0, second.stderr[-3000:]
        assert (
            f"skip plain-seed0: run {run.info.run_id} is being trained by pid {first.pid} on "
            f"{socket.gethostname()}" in output(second)
        )
        assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()[-3000:]
    run = only_run(tmp_path, "twice")
    assert run.info.status == "FINISHED" and run.data.tags["pid"] == str(first.pid)
    history = history_of(tmp_path, run.info.run_id)
    assert all([s for s, _ in points] == [1, 2, 3] for points in history.values())


def test_two_copies_of_a_sweep_share_its_jobs_and_log_each_pass_once(tmp_path, tiny_root):
    grid = ["model=plain,bn", "seed=0,1", f"trainer.epochs={EPOCHS}", "data.train_size=200"]
    args = ["-m", *job_args(tmp_path, tiny_root, "copies", *grid)]
    with launched(args, tmp_path, name="a") as a, launched(args, tmp_path, name="b") as b:
        assert a.wait(timeout=300) == 0 and b.wait(timeout=300) == 0
    err = (tmp_path / "a.err").read_text() + (tmp_path / "b.err").read_text()
    out = (tmp_path / "a.out").read_text() + (tmp_path / "b.out").read_text() + err
    runs = runs_in(tmp_path, "copies")
    assert sorted(r.info.run_name for r in runs) == [
        "bn-seed0", "bn-seed1", "plain-seed0", "plain-seed1",
    ]  # fmt: skip
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, out[-3000:])
        for points in history_of(tmp_path, run.info.run_id).values():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), run.info.run_name
    (parent,) = runs_in(tmp_path, "copies", "sweep")
    assert parent.info.status == "FINISHED"
    assert "Traceback" not in err


def test_a_live_run_s_heartbeat_advances_and_keeps_another_host_off(tmp_path, slow_root):
    stale_after_s = 10
    args = job_args(
        tmp_path, slow_root, "beating", "trainer.epochs=1000", "tracking.heartbeat_s=0.5",
        f"tracking.stale_after_s={stale_after_s}",
    )  # fmt: skip
    client = MlflowClient(store_uri(tmp_path))
    with launched(args, tmp_path) as job:
        (run,) = wait_for("the job's run", lambda: runs_in(tmp_path, "beating"), job)
        first_beat = int(run.data.tags["heartbeat"])
        beats = {first_beat}

        def beaten_past_staleness() -> bool:
            beats.add(int(client.get_run(run.info.run_id).data.tags["heartbeat"]))
            silent_s = time.time() - first_beat / 1000  # since the run was marked alive first
            return len(beats) >= 3 and silent_s > stale_after_s

        # Were the tag not renewed, the run would look dead to another host by now.
        wait_for(
            "the heartbeat to advance for longer than stale_after_s", beaten_past_staleness, job
        )
        assert sorted(beats)[-1] > first_beat
        # Another host (its own name, its own checkpoint disk, hence its own claim file) can
        # only go by the heartbeat, and the job's is fresh: it leaves the run alone.
        other_host = tmp_path / "other_host"
        other_host.mkdir()
        (other_host / "sitecustomize.py").write_text(
            "import socket\nsocket.gethostname = lambda: 'elsewhere'\n"
        )
        other_args = override(args, "trainer.checkpoint_dir", tmp_path / "other_ckpt")
        other = run_cli("run.py", *other_args, env={"PYTHONPATH": str(other_host)})
        assert other.returncode == 0, other.stderr[-3000:]
        claimed = (
            rf"skip plain-seed0: run {run.info.run_id} is being trained by pid {job.pid} on "
            rf"{re.escape(socket.gethostname())} \(heartbeat \d+ s ago\)"
        )
        assert re.search(claimed, output(other)), output(other)[-3000:]
        assert job.poll() is None
        run = only_run(tmp_path, "beating")
        assert run.info.status == "RUNNING" and run.data.tags["pid"] == str(job.pid)


def test_a_run_of_another_host_is_resumable_only_once_its_heartbeat_is_stale(tmp_path, slow_root):
    args = job_args(
        tmp_path, slow_root, "hosts", f"trainer.epochs={EPOCHS}", "tracking.stale_after_s=60"
    )
    with launched(args, tmp_path) as job:
        killed = kill_when_logged(job, tmp_path, "hosts")
    client = MlflowClient(store_uri(tmp_path))
    run_id = killed.info.run_id
    now_ms = int(1000 * time.time())
    # As if a process on another machine were training it, heartbeat 10 s ago: hands off.
    for key, value in {
        "host": "elsewhere",
        "pid": "4242",
        "heartbeat": str(now_ms - 10_000),
    }.items():
        client.set_tag(run_id, key, value)
    busy = run_cli("run.py", *args)
    assert busy.returncode == 0, busy.stderr[-3000:]
    claimed = rf"run {run_id} is being trained by pid 4242 on elsewhere \(heartbeat \d+ s ago\)"
    assert re.search(claimed, output(busy)), output(busy)[-3000:]
    assert logged_passes(tmp_path, run_id) == [1]
    # Silent for longer than tracking.stale_after_s: dead, so resumed in place.
    client.set_tag(run_id, "heartbeat", str(now_ms - 120_000))
    resumed = run_cli("run.py", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume plain-seed0: run {run_id}" in output(resumed)
    run = only_run(tmp_path, "hosts")
    assert run.info.status == "FINISHED"
    assert logged_passes(tmp_path, run_id) == list(range(1, EPOCHS + 1))
    assert run.data.tags["host"] == socket.gethostname()


# --- 3. checkpoints are keyed by store, experiment and run ---------------------------------------


def test_checkpoints_of_two_stores_never_collide(tmp_path, slow_root):
    store_a, store_b = tmp_path / "a", tmp_path / "b"
    args_a, args_b = (
        override(
            job_args(store, slow_root, "same", f"trainer.epochs={EPOCHS}"),
            "trainer.checkpoint_dir",
            tmp_path / "ckpt",
        )
        for store in (store_a, store_b)
    )  # job_args made both folders (each with an empty store)
    with launched(args_a, store_a) as job:
        killed = kill_when_logged(job, store_a, "same")
    assert only_run(store_a, "same").info.status == "RUNNING"  # as a kill -9 leaves it
    (checkpoint,) = (tmp_path / "ckpt").glob("**/*.pt")
    finished_b = run_cli("run.py", *args_b)  # experiment id 1 in both stores, same config
    assert finished_b.returncode == 0, finished_b.stderr[-3000:]
    assert checkpoint.is_file()  # store b's run did not take or delete store a's checkpoint

    resumed = run_cli("run.py", *args_a)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume plain-seed0: run {killed.info.run_id}" in output(resumed)
    run_a, run_b = only_run(store_a, "same"), only_run(store_b, "same")
    assert run_a.info.run_id == killed.info.run_id and run_a.info.status == "FINISHED"
    history_a, history_b = (
        history_of(store_a, run_a.info.run_id),
        history_of(store_b, run_b.info.run_id),
    )
    for key in UNTIMED:
        assert history_a[key] == history_b[key], key  # resumed from its own checkpoint: same bits


def test_logged_passes_without_a_checkpoint_restart_openly_in_a_new_run(tmp_path, slow_root):
    args = job_args(tmp_path, slow_root, "lost", f"trainer.epochs={EPOCHS}")
    with launched(args, tmp_path) as job:
        killed = kill_when_logged(job, tmp_path, "lost")
    for checkpoint in (tmp_path / "ckpt").glob("**/*.pt"):
        checkpoint.unlink()
    relaunch = run_cli("run.py", *args)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    runs = {r.info.run_id: r for r in runs_in(tmp_path, "lost")}
    old = runs.pop(killed.info.run_id)
    (new,) = runs.values()
    assert f"restart plain-seed0: run {old.info.run_id} logged passes but its checkpoint" in output(
        relaunch
    )
    assert old.data.tags["restarted_as"] == new.info.run_id and old.info.status == "KILLED"
    assert new.data.tags["restarted_from"] == old.info.run_id and new.info.status == "FINISHED"
    assert logged_passes(tmp_path, old.info.run_id) == [1]
    assert logged_passes(tmp_path, new.info.run_id) == list(range(1, EPOCHS + 1))


# --- 4, 5. where and how a run runs never block a resume nor split results -----------------------


def test_a_resume_may_change_where_and_how_keys(tmp_path, slow_root):
    args = job_args(tmp_path, slow_root, "moved", f"trainer.epochs={EPOCHS}")
    with launched(args, tmp_path) as job:
        killed = kill_when_logged(job, tmp_path, "moved")
    changed = [*args, "data.download=false", "trainer.chunk_size=77", "trainer.deterministic=false"]
    resumed = run_cli("run.py", *changed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = only_run(tmp_path, "moved")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["trainer.chunk_size"] == "77" and run.data.tags["data.download"] == "False"
    assert "trainer.chunk_size" not in run.data.params and "data.root" not in run.data.params
    assert logged_passes(tmp_path, run.info.run_id) == list(range(1, EPOCHS + 1))

    again = run_cli("run.py", *args, "trainer.cuda_graphs=false", "trainer.device=auto")
    assert again.returncode == 0 and "already FINISHED" in output(again)


# --- 6. a sweep knows every job it asked for -----------------------------------------------------


def test_a_sweep_lists_every_job_it_asked_for_run_or_skipped(tmp_path, tiny_root):
    args = ["-m", *job_args(tmp_path, tiny_root, "listed", "trainer.epochs=1", "seed=0,1")]
    assert run_cli("run.py", *args).returncode == 0
    more = run_cli("run.py", *override(args, "seed", "0,1,2"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert output(more).count("already FINISHED") == 2
    (second,) = [
        p for p in runs_in(tmp_path, "listed", "sweep") if "0,1,2" in p.data.tags["overrides"]
    ]
    listed = {k: v for k, v in second.data.tags.items() if k.startswith("job.")}
    runs = runs_in(tmp_path, "listed")
    assert listed == {f"job.{r.data.tags['fingerprint']}": r.info.run_id for r in runs}
    assert len(listed) == 3


# --- 7. relative store paths are relative to the project root ------------------------------------


def test_a_relative_store_path_resolves_from_the_project_root(tmp_path, tiny_root):
    elsewhere = tmp_path / "launched_from"
    elsewhere.mkdir()
    relative = os.path.relpath(tmp_path / "store", PROJECT_ROOT)
    args = job_args(
        tmp_path, tiny_root, "rel", "trainer.epochs=1", uri=f"sqlite:///{relative}/mlflow.db"
    )
    result = run_cli("run.py", *args, cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert only_run(tmp_path / "store", "rel").info.status == "FINISHED"
    assert not list(elsewhere.rglob("mlflow.db"))


# --- 9. a new store opened by several processes at once ------------------------------------------


def test_a_new_store_opened_by_several_processes_at_once_is_created_once(tmp_path, tiny_root):
    uri = store_uri(tmp_path)
    opener = (
        "import sys; from hw3.tracking.store import connect, experiment_id; "
        f"print('experiment', experiment_id(connect({uri!r}), 'race'))"
    )
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", opener],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    job = run_cli("run.py", *job_args(tmp_path, tiny_root, "race", "trainer.epochs=1", uri=uri))
    results = [p.communicate(timeout=300) for p in openers]
    assert job.returncode == 0, job.stderr[-3000:]
    for (out, err), proc in zip(results, openers, strict=True):
        assert proc.returncode == 0 and out.strip().startswith("experiment"), err[-3000:]
    assert only_run(tmp_path, "race").info.status == "FINISHED"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert not [t for t in tables if t.startswith("_alembic_tmp")]  # no migration left half-done


# --- 10. which data, exactly ---------------------------------------------------------------------


def test_every_run_records_its_dataset_and_other_data_is_another_run(tmp_path, tiny_root):
    args = job_args(tmp_path, tiny_root, "data", "trainer.epochs=1", "data.train_size=200")
    first = run_cli("run.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    run = only_run(tmp_path, "data")
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    raw = tiny_root / "FashionMNIST" / "raw"
    md5 = {name: hashlib.md5((raw / name).read_bytes()).hexdigest() for name in OFFICIAL_MD5}
    assert dataset.name == "FashionMNIST train[:200]"
    assert dataset.digest == run.data.tags["dataset_digest"]
    assert json.loads(dataset.profile)["md5"] == md5
    assert [t.value for t in dataset_input.tags] == ["training"]

    # The same config on other files (one byte changed) is not the same run.
    other = tmp_path / "other"
    shutil.copytree(tiny_root, other)
    labels = other / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = (data[-1] + 1) % 10
    labels.write_bytes(bytes(data))
    second = run_cli("run.py", *override(args, "data.root", other))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already FINISHED" not in output(second)
    digests = {r.data.tags["dataset_digest"] for r in runs_in(tmp_path, "data")}
    assert len(digests) == 2


def test_a_run_failed_on_broken_data_resumes_in_place_once_they_are_repaired(tmp_path):
    root = write_dataset(tmp_path / "data", 512, 256)
    images = raw_dir(root) / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(good[:5000])
    args = job_args(tmp_path, root, "repaired", "trainer.epochs=1")
    broken = run_cli("run.py", *args)
    assert broken.returncode == 1
    (failed,) = runs_in(tmp_path, "repaired")
    assert failed.info.status == "FAILED" and "truncated" in failed.data.tags["error"]
    assert not failed.inputs.dataset_inputs  # it never trained on them

    images.write_bytes(good)
    repaired = run_cli("run.py", *args)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert f"resume plain-seed0: run {failed.info.run_id}" in output(repaired)
    (run,) = runs_in(tmp_path, "repaired")
    assert (run.info.run_id, run.info.status) == (failed.info.run_id, "FINISHED")
    assert (
        "error" not in run.data.tags
        and run.data.tags["dataset_digest"] != (failed.data.tags["dataset_digest"])
    )
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == run.data.tags["dataset_digest"]
