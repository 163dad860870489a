"""Who trains a run: exclusive claims across processes, liveness (dead, zombie, reused pid, other
hosts' heartbeats), the heartbeat thread, a sweep's parent left open while runs still train, and
its launches: never counted as its jobs, ended KILLED once their launching process is gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.processes import wait_for
from support.stores import store_uri

from hw3.tracking.claim import (
    Claim,
    Heartbeat,
    holder_tags,
    live_holder,
    now_ms,
    process_alive,
    process_start,
    process_stat,
)
from hw3.tracking.record import log_values
from hw3.tracking.schema import PROJECT_ROOT
from hw3.tracking.store import connect, experiment_id
from hw3.tracking.sweep import close_sweep, end_dead_launches

STALE_S = 60.0


def holding(path: Path) -> subprocess.Popen:
    """Another process that takes the claim on `path`, says so, then sleeps until killed."""
    code = (
        "import sys, time; from pathlib import Path; from hw3.tracking.claim import Claim; "
        f"c = Claim.take(Path({str(path)!r})); print(type(c).__name__, flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "Claim"
    return proc


def test_a_claim_is_exclusive_and_dies_with_its_holder(tmp_path):
    path = tmp_path / "claims" / "config.lock"
    other = holding(path)
    try:
        held = Claim.take(path)
        assert held == f"pid {other.pid} on {socket.gethostname()}"
    finally:
        other.kill()
        other.wait()
    mine = Claim.take(path)  # kill -9 dropped the lock with the process
    assert isinstance(mine, Claim)
    assert Claim.take(path) == f"pid {os.getpid()} on {socket.gethostname()}"  # even for us
    mine.release()
    again = Claim.take(path)
    assert isinstance(again, Claim)
    again.release()


def test_dead_zombie_and_reused_processes_are_not_alive():
    me = holder_tags()
    assert process_alive(os.getpid(), me["pid_start"])
    assert not process_alive(os.getpid(), str(int(me["pid_start"]) + 1))  # a reused pid

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started = process_start(child.pid)
    assert process_alive(child.pid, started)
    child.kill()
    wait_for("the child to be a zombie", lambda: process_stat(child.pid)[:1] == ["Z"])
    assert not process_alive(child.pid, started)  # killed, not reaped
    child.wait()
    assert not process_alive(child.pid, started)  # gone


def test_liveness_by_pid_here_and_by_heartbeat_elsewhere():
    here = holder_tags() | {"heartbeat": str(now_ms() - 3_600_000)}  # our heartbeat is old...
    assert live_holder(here, "RUNNING", stale_after_s=STALE_S) == (
        f"pid {os.getpid()} on {socket.gethostname()}"
    )  # ...but this host can ask the process itself
    assert live_holder(here, "FAILED", stale_after_s=STALE_S) is None
    elsewhere = {"host": "elsewhere", "pid": "7", "pid_start": "1"}
    fresh = live_holder(
        elsewhere | {"heartbeat": str(now_ms() - 5_000)}, "RUNNING", stale_after_s=STALE_S
    )
    assert fresh is not None and fresh.startswith("pid 7 on elsewhere (heartbeat ")
    stale = elsewhere | {"heartbeat": str(now_ms() - 61_000)}
    assert live_holder(stale, "RUNNING", stale_after_s=STALE_S) is None
    assert live_holder({}, "RUNNING", stale_after_s=STALE_S) is None  # never claimed


def test_the_heartbeat_beats_until_stopped_and_outlives_failing_beats():
    beats: list[float] = []
    failed = threading.Event()

    def beat() -> None:
        beats.append(time.monotonic())
        if not failed.is_set():
            failed.set()
            raise OSError("server restarting")

    heartbeat = Heartbeat(beat, interval_s=0.05)
    heartbeat.start()
    wait_for("three beats", lambda: len(beats) >= 3)
    heartbeat.stop()
    count = len(beats)
    time.sleep(0.2)
    assert len(beats) == count and failed.is_set()


def test_a_sweep_parent_stays_open_while_another_process_trains_its_run(tmp_path):
    store = connect(store_uri(tmp_path))
    experiment = experiment_id(store, "parent")
    parent = store.client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    child_tags = {"kind": "train", "mlflow.parentRunId": parent}
    done = store.client.create_run(experiment, tags=child_tags).info.run_id
    store.client.set_terminated(done, "FINISHED")

    def close(completed: bool) -> str:
        return close_sweep(store, experiment, parent, completed=completed, stale_after_s=STALE_S)

    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        running = store.client.create_run(experiment, tags=child_tags).info.run_id
        holder = {"host": socket.gethostname(), "pid": trainer.pid}
        holder["pid_start"] = process_start(trainer.pid)
        log_values(store, running, tags=holder | {"heartbeat": now_ms()})
        assert close(completed=True) == "RUNNING"
        assert store.client.get_run(parent).info.status == "RUNNING"
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    # Its trainer died (the run never ended): the sweep is not complete.
    assert close(completed=True) == "FAILED"
    store.client.set_terminated(running, "FINISHED")
    assert close(completed=True) == "FINISHED"
    assert close(completed=False) == "FAILED"
    assert store.client.get_run(parent).info.status == "FAILED"


@pytest.mark.parametrize("superseded", ["superseded", "restarted_as"])
def test_runs_replaced_by_newer_ones_do_not_fail_their_sweep(tmp_path, superseded):
    store = connect(store_uri(tmp_path))
    experiment = experiment_id(store, "replaced")
    parent = store.client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    for tags, status in (({superseded: "x"}, "KILLED"), ({}, "FINISHED")):
        child = {"kind": "train", "mlflow.parentRunId": parent} | tags
        run = store.client.create_run(experiment, tags=child)
        store.client.set_terminated(run.info.run_id, status)
    status = close_sweep(store, experiment, parent, completed=True, stale_after_s=STALE_S)
    assert status == "FINISHED"


def test_a_sweeps_launches_nested_beside_its_jobs_do_not_count_as_jobs(tmp_path):
    store = connect(store_uri(tmp_path))
    experiment = experiment_id(store, "launches")
    parent = store.client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    nested = {"mlflow.parentRunId": parent}
    job = store.client.create_run(experiment, tags=nested | {"kind": "train"}).info.run_id
    store.client.set_terminated(job, "FINISHED")
    failed = store.client.create_run(experiment, tags=nested | {"kind": "launch"}).info.run_id
    store.client.set_terminated(failed, "FAILED")  # an earlier launch that failed
    this_launch = nested | {"kind": "launch"} | holder_tags() | {"heartbeat": str(now_ms())}
    running = store.client.create_run(experiment, tags=this_launch).info.run_id  # alive: us
    status = close_sweep(store, experiment, parent, completed=True, stale_after_s=STALE_S)
    assert status == "FINISHED"
    assert store.client.get_run(running).info.status == "RUNNING"  # the launch ends itself


def test_launches_whose_process_is_gone_end_killed_at_their_last_heartbeat(tmp_path):
    store = connect(store_uri(tmp_path))
    experiment = experiment_id(store, "dead")
    parent = store.client.create_run(experiment, tags={"kind": "sweep"}).info.run_id
    old_beat = now_ms() - int(2 * STALE_S * 1000)

    def launch(holder: dict[str, object], status: str = "RUNNING") -> str:
        tags = {"kind": "launch", "mlflow.parentRunId": parent} | holder
        run_id = store.client.create_run(experiment, tags=tags).info.run_id
        if status != "RUNNING":
            store.client.set_terminated(run_id, status)
        return run_id

    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        here = {"host": socket.gethostname(), "pid": launcher.pid}
        here["pid_start"] = process_start(launcher.pid)
        killed = launch(here | {"heartbeat": 1_000})
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    cases = {  # launch → (status after, end time after; None: still open)
        killed: ("KILLED", 1_000),
        launch(holder_tags() | {"heartbeat": now_ms()}): ("RUNNING", None),  # this process
        launch({"host": "elsewhere", "pid": 1, "heartbeat": now_ms()}): ("RUNNING", None),
        launch({"host": "elsewhere", "pid": 1, "heartbeat": old_beat}): ("KILLED", old_beat),
    }
    done = launch(holder_tags(), "FINISHED")
    cases[done] = ("FINISHED", store.client.get_run(done).info.end_time)
    assert end_dead_launches(store, experiment, parent, stale_after_s=STALE_S) == len(cases)
    after = {r: store.client.get_run(r).info for r in cases}
    assert {r: (i.status, i.end_time) for r, i in after.items()} == cases
