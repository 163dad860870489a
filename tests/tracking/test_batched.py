"""hydra/launcher=batched: a sweep's compatible jobs trained together in one process, each still
its own MLflow run, indistinguishable from the basic launcher's but for its group tags."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from support.cli import error_lines, output, run_cli, skipped
from support.processes import kill_when_logged, launched
from support.runs import L_HAT, METRICS, history_of, logged_passes, runs_in, untimed
from support.stores import store_uri

from hw3.engine.data import load_fashion_mnist
from hw3.engine.train import train
from hw3.tracking.group import plan_groups

BATCHED = "hydra/launcher=batched"
# Tags that differ between two launches of one sweep whatever the launcher: who trained the run
# and when, the parent's run id; and the group tags, which only the batched launcher sets.
VOLATILE = {"heartbeat", "pid", "pid_start", "mlflow.parentRunId", "group_size", "group_pass_time"}


def sweep_args(tmp: Path, root: Path, *extra: str) -> list[str]:
    """A sweep's overrides with everything it writes under `tmp`; the store comes from the
    environment (`store_env`), so that two stores see the same overrides, params and tags."""
    return [
        "-m",
        f"data.root={root}",
        "data.verify=false",
        "trainer.device=cpu",
        f"trainer.checkpoint_dir={tmp / 'ckpt'}",  # keyed by store: two stores never share one
        "tracking.experiment=batched",
        f"hydra.sweep.dir={tmp / 'multirun'}",
        *extra,
    ]


def store_env(store: Path) -> dict[str, str]:
    """The environment that points a sweep at the SQLite store in folder `store`."""
    store.mkdir(parents=True, exist_ok=True)
    return {"MLFLOW_TRACKING_URI": store_uri(store)}


def by_name(store: Path) -> dict[str, object]:
    """The store's training runs by run name."""
    return {r.info.run_name: r for r in runs_in(store, "batched")}


def artifacts(store: Path, run_id: str) -> dict[str, bytes | None]:
    """A run's artifact files → their bytes (but hydra.yaml's, which names the launcher)."""
    client = MlflowClient(store_uri(store))
    local = Path(client.download_artifacts(run_id, "", str(store / "artifacts" / run_id)))
    files = sorted(p for p in local.rglob("*") if p.is_file())
    return {
        str(p.relative_to(local)): None if p.name == "hydra.yaml" else p.read_bytes() for p in files
    }


def results(store: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """A run's logged metrics but the timings, as (pass, value) points."""
    history = history_of(store, run_id)
    assert set(history) == METRICS
    return untimed(history)


def solo(root: Path, *, lr: float, epochs: int) -> dict[str, list[tuple[int, float]]]:
    """What plain, seed 0, trains alone on `root` through the engine's single-run API."""
    data = load_fashion_mnist(
        root,
        normalize=True,
        mean=None,
        std=None,
        train_size=None,
        test_size=None,
        download=False,
        system_dir=None,
        checksums=None,
    )
    history = train(
        data,
        model="plain",
        lr=lr,
        momentum=0.0,
        weight_decay=0.0,
        epochs=epochs,
        batch_size=32,
        seed=0,
        device="cpu",
        measure=L_HAT,
        chunk_size=10_000,
        cuda_graphs=True,
        deterministic=True,
    )
    return untimed({k: [(i, m[k]) for i, m in enumerate(history, start=1)] for k in METRICS})


@pytest.mark.slow
def test_a_batched_sweep_logs_what_the_basic_launcher_logs_and_relaunches_alike(
    tmp_path, tiny_root
):
    args = sweep_args(tmp_path, tiny_root, "model=plain,bn,stride", "seed=0,1", "trainer.epochs=2")
    batched, basic = tmp_path / "batched", tmp_path / "basic"
    grouped = run_cli("run.py", *args, BATCHED, env=store_env(batched))
    assert grouped.returncode == 0, grouped.stderr[-3000:]
    alone = run_cli("run.py", *args, env=store_env(basic))
    assert alone.returncode == 0, alone.stderr[-3000:]

    (parent,) = runs_in(batched, "batched", kind="sweep")
    assert parent.info.status == "FINISHED"
    runs, expected = by_name(batched), by_name(basic)
    assert (
        sorted(runs)
        == sorted(expected)
        == [f"{m}-seed{s}" for m in ("bn", "plain", "stride") for s in (0, 1)]
    )
    for name, run in runs.items():
        reference = expected[name]
        assert run.info.status == "FINISHED", name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["group_size"] == "2" and run.data.tags["group_pass_time"] == "own"
        assert "group_size" not in reference.data.tags
        assert run.data.params == reference.data.params, name
        tags = {k: v for k, v in run.data.tags.items() if k not in VOLATILE}
        assert tags == {k: v for k, v in reference.data.tags.items() if k not in VOLATILE}, name
        assert results(batched, run.info.run_id) == results(basic, reference.info.run_id), name
        assert artifacts(batched, run.info.run_id) == artifacts(basic, reference.info.run_id)

    again = run_cli("run.py", *args, BATCHED, env=store_env(batched))
    assert again.returncode == 0, again.stderr[-3000:]
    assert skipped(output(again)) == sorted((n, r.info.run_id) for n, r in runs.items())
    assert by_name(batched).keys() == runs.keys()

    more = [*args[:-2], "seed=0,1,2", "trainer.epochs=2"]
    extended = run_cli("run.py", *more, BATCHED, env=store_env(batched))
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert skipped(output(extended)) == sorted((n, r.info.run_id) for n, r in runs.items())
    after = by_name(batched)
    assert sorted(set(after) - set(runs)) == ["bn-seed2", "plain-seed2", "stride-seed2"]
    for name, run in after.items():
        assert run.info.status == "FINISHED", name
        if name in runs:  # untouched: the same run, its passes logged once
            assert run.info.run_id == runs[name].info.run_id
            assert logged_passes(batched, run.info.run_id) == [1, 2]
        else:  # alone in its group: trained exactly as without the launcher, no group tags
            assert "group_size" not in run.data.tags


@pytest.mark.slow
def test_a_diverging_member_stops_alone(tmp_path, tiny_root):
    grid = ["model=plain", "seed=0", "optimizer.lr=0.04,0.05,1e5", "trainer.epochs=2"]
    stop = tmp_path / "stop"
    stopped = run_cli(
        "run.py",
        *sweep_args(tmp_path, tiny_root, *grid, "trainer.on_divergence=stop", BATCHED),
        env=store_env(stop),
    )
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    runs = {r.data.params["optimizer.lr"]: r for r in runs_in(stop, "batched")}
    assert sorted(runs) == ["0.04", "0.05", "100000.0"]
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert all(r.data.tags["group_size"] == "3" for r in runs.values())
    diverged = runs.pop("100000.0").data.tags
    assert (diverged["diverged"], diverged["diverged_pass"]) == ("true", "1")
    for lr, run in runs.items():
        assert "diverged" not in run.data.tags
        assert results(stop, run.info.run_id) == solo(tiny_root, lr=float(lr), epochs=2), lr
    (parent,) = runs_in(stop, "batched", kind="sweep")
    assert parent.info.status == "FINISHED"

    fail = tmp_path / "fail"
    # lr=-1 is out of range: that job fails before it has a run, and the group trains on.
    grid[2] = "optimizer.lr=0.04,1e5,-1"
    failed = run_cli(
        "run.py",
        *sweep_args(tmp_path, tiny_root, *grid, "trainer.on_divergence=fail", BATCHED),
        env=store_env(fail),
    )
    assert failed.returncode == 1
    runs = {r.data.params["optimizer.lr"]: r for r in runs_in(fail, "batched")}
    assert sorted(runs) == ["0.04", "100000.0"]
    diverged = runs["100000.0"]
    assert diverged.info.status == "FAILED" and diverged.data.tags["diverged_pass"] == "1"
    assert runs["0.04"].info.status == "FINISHED"
    assert results(fail, runs["0.04"].info.run_id) == solo(tiny_root, lr=0.04, epochs=2)
    message = f"plain-seed0 FAILED: {diverged.data.tags['error']}"
    invalid = "invalid optimizer.lr=-1.0: it must be > 0 (set optimizer.lr=VALUE)"
    assert error_lines(output(failed)) == [f"error: {message}"]
    lines = output(failed).splitlines()
    logged = [m for line in lines for m in (message, invalid) if line.endswith(m)]
    assert logged == [message, invalid, message]  # a log line per failed job, then the error
    (parent,) = runs_in(fail, "batched", kind="sweep")
    assert parent.info.status == "FAILED"


@pytest.mark.slow
def test_a_group_killed_midway_resumes_every_member_in_its_own_run(tmp_path, slow_root):
    args = sweep_args(tmp_path, slow_root, "model=plain", "seed=0,1", "trainer.epochs=3", BATCHED)
    killed_store, straight_store = tmp_path / "killed", tmp_path / "straight"
    with launched(args, tmp_path, env=store_env(killed_store)) as proc:
        # Members train in turn, pass by pass: once one logged pass 2, each has a checkpoint.
        kill_when_logged(proc, killed_store, "batched", passes=2)
    before = by_name(killed_store)
    assert sorted(before) == ["plain-seed0", "plain-seed1"]
    assert all(r.info.status == "RUNNING" for r in before.values())

    resumed = run_cli("run.py", *args, env=store_env(killed_store))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert output(resumed).count("from its last checkpoint") == 2
    straight = run_cli("run.py", *args, env=store_env(straight_store))
    assert straight.returncode == 0, straight.stderr[-3000:]
    after, expected = by_name(killed_store), by_name(straight_store)
    assert {n: r.info.run_id for n, r in after.items()} == {
        n: r.info.run_id for n, r in before.items()
    }
    for name, run in after.items():
        assert run.info.status == "FINISHED", name
        history = history_of(killed_store, run.info.run_id)
        assert all([s for s, _ in points] == [1, 2, 3] for points in history.values()), name
        assert results(killed_store, run.info.run_id) == results(
            straight_store, expected[name].info.run_id
        ), name


def test_jobs_share_a_group_when_they_train_one_architecture_on_one_dataset(compose_config):
    def configs(*grid: list[str]) -> list:
        return [OmegaConf.to_object(compose_config(*overrides)) for overrides in grid]

    sweep = configs(
        ["model=plain", "seed=0"],
        ["model=bn", "seed=0"],
        ["model=plain", "seed=1", "optimizer.lr=0.1", "optimizer=sgd_momentum"],
        ["model=plain", "seed=2", "trainer.epochs=3", "trainer.on_divergence=stop"],
        ["model=plain", "seed=3", "data.train_size=100"],  # other data
        ["model=plain", "seed=4", "trainer.batch_size=16"],
        ["model=plain", "seed=5", "trainer.device=cpu"],
        ["model=plain", "seed=6", "trainer.deterministic=false"],
        ["model=plain", "seed=7", "smoothness.enabled=false"],
        ["model=plain", "seed=8", "smoothness.directions=2"],
        ["model=plain", "seed=9", "data.normalize=false"],
        ["model=bn", "seed=1", "trainer.checkpoint_dir=elsewhere", "force=true"],
        ["model=plain", "seed=10", "data.root=./data"],  # the same folder, spelled otherwise
    )
    assert plan_groups(sweep, 10) == [
        [0, 2, 3, 12], [1, 11], [4], [5], [6], [7], [8], [9], [10],
    ]  # fmt: skip
    assert plan_groups(sweep, 3) == [[0, 2, 3], [1, 11], [4], [5], [6], [7], [8], [9], [10], [12]]
    assert plan_groups(sweep, 1) == [[i] for i in range(len(sweep))]


@pytest.mark.slow
def test_a_group_size_below_one_fails_in_one_line(tmp_path, tiny_root):
    result = run_cli(
        "run.py",
        *sweep_args(tmp_path, tiny_root, BATCHED, "hydra.launcher.group_size=0"),
        env=store_env(tmp_path / "store"),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: invalid hydra.launcher.group_size=0: it must be an integer >= 1 "
        "(set hydra.launcher.group_size=N)"
    )
    assert runs_in(tmp_path / "store", "batched") == []


@pytest.mark.slow
def test_a_member_that_cannot_be_ended_fails_alone_and_ends_when_relaunched(tmp_path, tiny_root):
    args = sweep_args(tmp_path, tiny_root, "model=plain", "seed=0,1", "trainer.epochs=2", BATCHED)
    # Job #1's Hydra folder holds a "YAML file" that is a folder: its artifacts cannot be logged.
    broken = tmp_path / "multirun" / "1" / ".hydra" / "broken.yaml"
    broken.mkdir(parents=True)
    store = tmp_path / "store"
    ended = run_cli("run.py", *args, env=store_env(store))
    assert ended.returncode == 1
    runs = by_name(store)
    assert runs["plain-seed0"].info.status == "FINISHED"
    failed = runs["plain-seed1"]
    assert failed.info.status == "FAILED" and failed.data.tags["group_size"] == "2"
    assert failed.data.tags["error"].startswith("[Errno 21] Is a directory")
    assert logged_passes(store, failed.info.run_id) == [1, 2]
    assert error_lines(output(ended)) == [
        f"error: plain-seed1 FAILED as its run was ended ({failed.data.tags['error']}); its "
        "passes are logged and its checkpoint kept: relaunch to end it"
    ]
    assert "Traceback" not in ended.stderr
    (parent,) = runs_in(store, "batched", kind="sweep")
    assert parent.info.status == "FAILED"

    broken.rmdir()
    again = run_cli("run.py", *args, env=store_env(store))
    assert again.returncode == 0, again.stderr[-3000:]
    assert skipped(output(again)) == [("plain-seed0", runs["plain-seed0"].info.run_id)]
    resumed = f"resume plain-seed1: run {failed.info.run_id} from its last checkpoint"
    assert resumed in output(again)
    run = by_name(store)["plain-seed1"]
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert logged_passes(store, run.info.run_id) == [1, 2]
    # It trained alone this time: no tags of a group it no longer trains in, nor of its failure.
    assert not {"group_size", "group_pass_time", "error"} & set(run.data.tags)
    assert "model/state_dict.pt" in artifacts(store, run.info.run_id)
    (parent,) = runs_in(store, "batched", kind="sweep")
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_a_member_whose_checkpoint_is_unreadable_restarts_openly_and_the_others_train(
    tmp_path, tiny_root
):
    args = sweep_args(tmp_path, tiny_root, "model=plain", "trainer.epochs=2", BATCHED)
    store = tmp_path / "store"
    # Seed 0 trains, but its run cannot be ended (a "YAML file" that is a folder): it is left
    # FAILED with its passes logged and its checkpoint kept; then that checkpoint is truncated.
    broken = tmp_path / "multirun" / "0" / ".hydra" / "broken.yaml"
    broken.mkdir(parents=True)
    assert run_cli("run.py", *args, "seed=0", env=store_env(store)).returncode == 1
    broken.rmdir()
    (failed,) = runs_in(store, "batched")
    (checkpoint,) = (tmp_path / "ckpt").rglob(f"{failed.info.run_id}.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])

    relaunch = run_cli("run.py", *args, "seed=0,1", env=store_env(store))
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert (
        f"restart plain-seed0: run {failed.info.run_id} logged passes but its checkpoint "
        f"{checkpoint} is unreadable (truncated or corrupt" in output(relaunch)
    )
    runs = {r.info.run_id: r for r in runs_in(store, "batched")}
    old = runs.pop(failed.info.run_id)
    assert old.info.status == "FAILED" and old.data.tags["error"].startswith("run ")
    new = runs[old.data.tags["restarted_as"]]
    assert new.data.tags["restarted_from"] == old.info.run_id
    assert sorted(r.info.run_name for r in runs.values()) == ["plain-seed0", "plain-seed1"]
    for run in runs.values():
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags["group_size"] == "2"  # the two trained together
        assert logged_passes(store, run.info.run_id) == [1, 2]
    assert results(store, new.info.run_id) == solo(tiny_root, lr=0.04, epochs=2)
