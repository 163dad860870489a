"""hydra/launcher=slurm against a real Slurm cluster (scripts/slurm-local up): a sweep of four
array jobs, a job killed hard and the relaunch that resumes it, and requests Slurm refuses."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import submitit
from submitit.core.utils import FailedJobError
from support.cli import cli_env, error_lines, job_args, run_cli
from support.processes import WAIT_S, launched, wait_for
from support.runs import EPOCHS, PAIR, PAIR_SWEEP, assert_complete, history_of, runs_in

from hw3.tracking.cli import slurm_failure
from hw3.tracking.schema import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "slurm-local"
# One cluster of one 2-core node: its tests run on one xdist worker, one after another.
pytestmark = pytest.mark.xdist_group("slurm")
# Small CPU jobs, two at a time on a 2-core node; a test overrides one key to see it refused.
LAUNCHER = {"gpus_per_task": "null", "cpus_per_task": "1", "mem_gb": "1", "timeout_min": "10"}
GRID = ["model=plain,bn", "seed=0,1", f"trainer.epochs={EPOCHS}"]
PAIR_GRID = [*PAIR_SWEEP, f"trainer.epochs={EPOCHS}"]  # two jobs: a victim and a witness


@dataclass(frozen=True)
class Cluster:
    """A Slurm cluster that takes jobs; `env` points run.py and Slurm's commands at it."""

    env: dict[str, str]

    def command(self, *args: str) -> str:
        """The output of one of Slurm's commands (squeue, sacct, scancel) on this cluster."""
        return subprocess.run(
            args, capture_output=True, text=True, check=True, timeout=60, env=cli_env(self.env)
        ).stdout

    def state(self, job: str) -> str:
        """Array task `job`'s state in the queue (PENDING, RUNNING, ...), '' once it has left."""
        return self.command("squeue", "-h", "-r", "-j", job, "-o", "%T").strip()

    def queued(self, jobs: list[str]) -> list[str]:
        """Those of `jobs` (array task ids such as 12_3) still pending or running."""
        return sorted(set(jobs) & set(self.command("squeue", "-h", "-r", "-o", "%i").split()))

    def states(self, jobs: list[str]) -> dict[str, str]:
        """Array task id → its final state in Slurm's accounting (COMPLETED, FAILED, ...)."""
        # Accounting lags the queue: a task gone from squeue can still read RUNNING in sacct.
        return wait_for(
            "Slurm's accounting to record the jobs' final states", lambda: self._final(jobs)
        )

    def _final(self, jobs: list[str]) -> dict[str, str] | None:
        """`jobs`' states in sacct once none is still pending, running or completing; else None."""
        arrays = ",".join(sorted({job.split("_")[0] for job in jobs}))
        rows = self.command("sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", arrays)
        states = dict(row.split("|") for row in rows.splitlines() if row)
        found = {job: states.get(job, "PENDING") for job in jobs}
        unfinished = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING"}
        return None if set(found.values()) & unfinished else found

    def cancel(self, jobs: list[str]) -> None:
        """Cancel those of `jobs` still queued, and wait until they have left the queue."""
        if queued := self.queued(jobs):
            self.command("scancel", *queued)
            wait_for("the cancelled jobs to leave the queue", lambda: not self.queued(jobs))


@pytest.fixture(scope="module")
def slurm_cluster() -> Cluster:
    """scripts/slurm-local's cluster if it is up; else a skip (a failure in CI, which starts it)
    that says what is missing: the packages, root, or which daemon."""
    status = subprocess.run(["bash", SCRIPT, "status"], capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        reason = (status.stdout + status.stderr).strip().splitlines()[-1]
        if os.environ.get("HW3_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    exports = subprocess.run(["bash", SCRIPT, "env"], capture_output=True, text=True, check=True)
    return Cluster(
        dict(line.removeprefix("export ").split("=", 1) for line in exports.stdout.splitlines())
    )


@pytest.fixture
def cluster(slurm_cluster: Cluster, tmp_path: Path) -> Iterator[Cluster]:
    """The cluster for one test; no job its sweeps submitted is left queued after it."""
    yield slurm_cluster
    slurm_cluster.cancel(array_jobs(tmp_path))


def slurm_sweep(
    tmp: Path, root: Path, experiment: str, grid: list[str] = GRID, **launcher: str
) -> list[str]:
    """run.py's arguments for `grid` as Slurm array jobs, LAUNCHER's keys updated by `launcher`."""
    keys = [f"hydra.launcher.{k}={v}" for k, v in (LAUNCHER | launcher).items()]
    return ["-m", *job_args(tmp, root, experiment, "hydra/launcher=slurm", *keys, *grid)]


def array_jobs(tmp: Path) -> list[str]:
    """The array task ids (12_0, 12_1, ...) of every job the sweeps in `tmp` submitted."""
    return sorted(p.name for p in (tmp / "multirun" / ".submitit").glob("[0-9]*_[0-9]*"))


def process_of(job: str) -> int:
    """The PID of the Python process (`python -u -m submitit.core._submit`, under srun) that
    runs array task `job` on this machine."""
    ids = [f"SLURM_ARRAY_JOB_ID={job.split('_')[0]}", f"SLURM_ARRAY_TASK_ID={job.split('_')[1]}"]
    for proc in Path("/proc").iterdir():
        with suppress(OSError):  # not a process, or gone meanwhile
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            environ = (proc / "environ").read_bytes().decode().split("\0")
            if argv[1:4] == ["-u", "-m", "submitit.core._submit"] and set(ids) <= set(environ):
                return int(proc.name)
    raise LookupError(f"no process of Slurm job {job} here")


def log_of(tmp: Path, job: str) -> str:
    """What array task `job` has printed so far (hw3's lines go to its stdout log)."""
    log = tmp / "multirun" / ".submitit" / job / f"{job}_0_log.out"
    return log.read_text() if log.exists() else ""


def first_job_after_a_pass(tmp: Path, sweep: subprocess.Popen) -> str:
    """The sweep's first array job, as soon as it has logged its first pass.

    Its log is polled tightly: a pass of these tiny jobs can take well under a second, less than
    a query of the store."""
    job = wait_for("the sweep's jobs to be submitted", lambda: array_jobs(tmp), sweep)[0]
    deadline = time.monotonic() + WAIT_S
    while not re.search(r" pass 1/\d+: ", log_of(tmp, job)):
        assert sweep.poll() is None and time.monotonic() < deadline, f"no pass 1 in {job}'s log"
        time.sleep(0.01)
    return job


def kill_after_a_pass(tmp: Path, sweep: subprocess.Popen) -> tuple[str, int]:
    """SIGKILL the sweep's first array job right after it has logged its first pass; its id and
    the PID it had."""
    job = first_job_after_a_pass(tmp, sweep)
    pid = process_of(job)
    os.kill(pid, signal.SIGKILL)
    return job, pid


@pytest.mark.slow
def test_a_sweep_of_four_slurm_jobs_lands_complete_from_any_launch_dir(
    cluster, tmp_path, tiny_root
):
    args = slurm_sweep(tmp_path, tiny_root, "slurm")
    result = run_cli("run.py", *args, env=cluster.env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(tmp_path, "slurm")  # nested under the parent: the sweep's ids reached the jobs
    jobs = array_jobs(tmp_path)
    assert len(jobs) == 4
    assert cluster.states(jobs) == dict.fromkeys(jobs, "COMPLETED")


@pytest.mark.slow
def test_a_slurm_job_killed_hard_fails_the_sweep_and_the_relaunch_resumes_it(
    cluster, tmp_path, tiny_root
):
    args = slurm_sweep(tmp_path, tiny_root, "killed", PAIR_GRID)
    with launched(args, tmp_path, cluster.env) as sweep:
        job, pid = kill_after_a_pass(tmp_path, sweep)
        returncode = sweep.wait(timeout=WAIT_S)
    wait_for("the other jobs to end", lambda: not cluster.queued(array_jobs(tmp_path)))

    assert returncode == 1
    err = (tmp_path / "launcher.err").read_text()
    (line,) = error_lines(err)
    assert f"Slurm job {job} ended without a result (state FAILED" in line
    assert "relaunch the same command" in line and "Traceback" not in err
    assert cluster.states([job]) == {job: "FAILED"}
    runs = {r.info.run_name: r for r in runs_in(tmp_path, "killed")}
    (victim,) = [name for name, r in runs.items() if r.data.tags["pid"] == str(pid)]
    killed = runs.pop(victim)
    assert killed.info.status == "RUNNING"  # as the kill left it: nothing ran to close it
    assert len(history_of(tmp_path, killed.info.run_id)["test/acc"]) < EPOCHS
    assert [r.info.status for r in runs.values()] == ["FINISHED"]
    finished = {name: r.info.end_time for name, r in runs.items()}

    relaunch = run_cli("run.py", *args, env=cluster.env)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    after = assert_complete(tmp_path, "killed", PAIR)
    assert after[victim].info.run_id == killed.info.run_id  # resumed in place
    assert {name: after[name].info.end_time for name in finished} == finished  # skipped


@pytest.mark.slow
def test_a_slurm_job_warned_of_a_time_limit_or_preemption_requeues_and_resumes(
    cluster, tmp_path, slow_root
):
    # Before a time limit, and on preemption, Slurm sends the job's submitit process SIGUSR2
    # (--signal=USR2@…): sent here by hand, after the job's first pass.
    args = slurm_sweep(tmp_path, slow_root, "requeued", PAIR_GRID)
    with launched(args, tmp_path, cluster.env) as sweep:
        job = first_job_after_a_pass(tmp_path, sweep)
        os.kill(process_of(job), signal.SIGUSR2)
        # Slurm holds a requeued job for about two minutes (its begin time): its policy, not
        # what this test is about. Once the job waits again, it may start at once.
        wait_for(f"Slurm to requeue {job}", lambda: cluster.state(job) == "PENDING", sweep)
        cluster.command("scontrol", "update", f"JobId={job}", "StartTime=now")
        returncode = sweep.wait(timeout=WAIT_S)
    assert returncode == 0, (tmp_path / "launcher.err").read_text()[-3000:]
    after = assert_complete(tmp_path, "requeued", PAIR)  # each pass once, every run FINISHED
    resumed = re.search(r"resume (\S+): run (\w+) from its last checkpoint", log_of(tmp_path, job))
    assert resumed, log_of(tmp_path, job)[-3000:]
    name, run_id = resumed.groups()
    assert after[name].info.run_id == run_id  # the same run, resumed by the requeued job
    assert "error" not in after[name].data.tags
    jobs = array_jobs(tmp_path)
    assert cluster.states(jobs) == dict.fromkeys(jobs, "COMPLETED")


@pytest.mark.slow
def test_a_cancelled_slurm_job_ends_its_run_killed_and_the_relaunch_resumes_it(
    cluster, tmp_path, slow_root
):
    args = slurm_sweep(tmp_path, slow_root, "cancelled", PAIR_GRID)
    with launched(args, tmp_path, cluster.env) as sweep:
        job = first_job_after_a_pass(tmp_path, sweep)
        pid = process_of(job)
        cluster.command("scancel", job)  # SIGTERM to the job's processes
        returncode = sweep.wait(timeout=WAIT_S)
    wait_for("the other jobs to end", lambda: not cluster.queued(array_jobs(tmp_path)))

    assert returncode == 1
    err = (tmp_path / "launcher.err").read_text()
    (line,) = error_lines(err)
    resumes = "stopped by SIGTERM; relaunch the same command: the run resumes from its last pass"
    assert line.endswith(resumes), line
    runs = {r.info.run_name: r for r in runs_in(tmp_path, "cancelled")}
    (victim,) = [name for name, r in runs.items() if r.data.tags["pid"] == str(pid)]
    assert line == f"error: {victim} {resumes}"
    cancelled = runs.pop(victim)
    assert cancelled.info.status == "KILLED" and cancelled.data.tags["error"] == resumes
    assert [r.info.status for r in runs.values()] == ["FINISHED"]

    relaunch = run_cli("run.py", *args, env=cluster.env)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    after = assert_complete(tmp_path, "cancelled", PAIR)
    assert after[victim].info.run_id == cancelled.info.run_id  # resumed in place


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launcher", "reason"),
    [
        ({"partition": "nowhere"}, "Invalid partition name specified"),
        ({"mem_gb": "1000000"}, "Memory specification can not be satisfied"),
    ],
    ids=["partition", "memory"],
)
def test_a_request_slurm_refuses_fails_in_one_line_and_trains_nothing(
    cluster, tmp_path, tiny_root, launcher, reason
):
    args = slurm_sweep(tmp_path, tiny_root, "refused", **launcher)
    result = run_cli("run.py", *args, env=cluster.env)
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "Slurm refused the sweep's jobs" in line and reason in line and "hydra.launcher" in line
    assert "Traceback" not in result.stderr
    assert runs_in(tmp_path, "refused") == []
    assert array_jobs(tmp_path) == []


@pytest.mark.slow
def test_a_slurm_sweep_without_slurm_installed_fails_in_one_line(tmp_path, tiny_root):
    args = slurm_sweep(tmp_path, tiny_root, "nowhere")
    result = run_cli("run.py", *args, env={"PATH": str(tmp_path)})  # no srun, sbatch on this PATH
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "no srun here" in line and "scripts/slurm-local up" in line
    assert "Traceback" not in result.stderr
    assert runs_in(tmp_path, "nowhere") == []


def test_a_job_that_fails_before_training_is_one_line_naming_the_error_and_its_log(tmp_path):
    # A real submitit job (a local process, as a node would run it) that cannot import a module,
    # as a job whose node lacks hw3 or its venv would fail.
    job = submitit.AutoExecutor(tmp_path, cluster="local").submit(
        importlib.import_module, "hw3_not_a_module"
    )
    with pytest.raises(FailedJobError) as failed:
        job.result()
    line = slurm_failure(failed.value)
    assert "\n" not in line and "failed before training" in line
    assert "ModuleNotFoundError: No module named 'hw3_not_a_module'" in line
    assert f"its log: {job.paths.stderr}" in line and "relaunch the same command" in line


@pytest.mark.slow
def test_a_relaunch_while_array_jobs_run_or_wait_trains_no_configuration_twice(
    cluster, tmp_path, slow_root
):
    # One job of each launch at a time. The first launch's first job is paused right after its
    # first pass (alive, its run claimed) and its second waits, while the relaunch's jobs run:
    # one meets the paused job's configuration, the other trains the waiting one's.
    args = slurm_sweep(tmp_path, slow_root, "again", PAIR_GRID, array_parallelism="1")
    with launched(args, tmp_path, cluster.env, name="first") as first:
        paused = process_of(first_job_after_a_pass(tmp_path, first))
        os.kill(paused, signal.SIGSTOP)
        try:
            assert len(cluster.queued(array_jobs(tmp_path))) == 2  # one paused, one waiting
            relaunch = run_cli("run.py", *args, env=cluster.env)
        finally:
            os.kill(paused, signal.SIGCONT)
        assert relaunch.returncode == 0, relaunch.stderr[-3000:]
        assert first.wait(timeout=WAIT_S) == 0, (tmp_path / "first.err").read_text()[-3000:]
    jobs = array_jobs(tmp_path)
    assert len(jobs) == 4 and cluster.states(jobs) == dict.fromkeys(jobs, "COMPLETED")

    runs = {r.info.run_name: r for r in runs_in(tmp_path, "again")}
    assert sorted(runs) == PAIR
    logs = [log_of(tmp_path, job) for job in jobs]
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        for points in history_of(tmp_path, run.info.run_id).values():
            assert [s for s, _ in points] == list(range(1, EPOCHS + 1)), name
        # Of the two jobs of this configuration, one trained it and the other said why not.
        trained = [log for log in logs if f"{name} pass 1/{EPOCHS}" in log]
        skipped = [
            log
            for log in logs
            if re.search(
                rf"skip {name}: (run \S+ is being trained by pid \d+ on |already FINISHED)", log
            )
        ]
        assert (len(trained), len(skipped)) == (1, 1), name
    both = "\n".join(logs)
    assert f"is being trained by pid {paused} on " in both and "already FINISHED" in both
