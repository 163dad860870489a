"""run.py end to end: sweeps into a temporary store, relaunch, kill and resume, failures, paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from support.cli import error_lines, job_args, output, run_cli, skipped
from support.runs import METRICS, history_of, runs_in, untimed
from support.stores import store_uri

from hw3.engine.data import read_fashion_mnist
from hw3.engine.evaluation import eval_mode, full_pass
from hw3.engine.files import locate, raw_dir
from hw3.engine.models import build_model
from hw3.engine.version import engine_version
from hw3.tracking.schema import PLACE_KEYS, PROJECT_ROOT

pytestmark = pytest.mark.slow  # every test starts run.py, and most of them train

GRID = ("model=plain,bn", "trainer.epochs=2")
SEEDS = "0,1"
FIRST = ["bn-seed0", "bn-seed1", "plain-seed0", "plain-seed1"]
# What a job of GRID logs as params (but model.name and seed), written out: the defaults of
# conf/ and the grid's trainer.epochs. Where and how a run runs are tags (PLACE_TAGS), not params.
EXPERIMENT_PARAMS = {
    "optimizer.name": "sgd",
    "optimizer.lr": "0.04",
    "optimizer.momentum": "0.0",
    "optimizer.weight_decay": "0.0",
    "data.normalize": "True",
    "data.mean": "None",
    "data.std": "None",
    "data.train_size": "None",
    "data.test_size": "None",
    "trainer.epochs": "2",
    "trainer.batch_size": "32",
    "trainer.on_divergence": "fail",
    "smoothness.enabled": "True",
    "smoothness.directions": "1",
    "smoothness.scales": "[1.0]",
    "smoothness.sharpness": "False",
    "smoothness.sharpness_examples": "4096",
    "smoothness.sharpness_iters": "20",
    "smoothness.sharpness_tol": "0.001",
}
PLACE_TAGS = {  # but data.root and trainer.checkpoint_dir, which are the test's folders
    "data.download": "True",
    "data.verify": "False",
    "trainer.device": "cpu",
    "trainer.chunk_size": "10000",
    "trainer.cuda_graphs": "True",
    "trainer.deterministic": "True",
    "tracking.uri": None,  # never logged: it may hold credentials
    "tracking.experiment": "sweep",
    "tracking.heartbeat_s": "30.0",
    "tracking.stale_after_s": "600.0",
    "force": None,  # per launch, not per run
}
# sha256 of the sorted JSON of a job's experiment values, first 16 hex digits; a change here
# changes the fingerprint of every run in every store (they would all rerun).
CONFIG_FINGERPRINTS = {
    "bn-seed0": "75fe7d1279ccd6a3",
    "bn-seed1": "cdde39242e545988",
    "plain-seed0": "03ab225996c714ab",
    "plain-seed1": "d08ed9ed7d75902c",
}


def sweep_args(tmp: Path, root: Path, seeds: str) -> list[str]:
    """The sweep of GRID over `seeds`, everything it writes in `tmp`."""
    return ["-m", *job_args(tmp, root, "sweep", *GRID, f"seed={seeds}")]


def git(*args: str) -> str:
    """A git command's output in the project's checkout."""
    return subprocess.run(
        ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass(frozen=True)
class Swept:
    """A finished sweep of GRID over SEEDS, and its runs as the launch left them, by name."""

    tmp: Path
    runs: dict[str, Run]
    histories: dict[str, dict[str, list[tuple[int, float]]]]
    parent: Run


# The tests of the one sweep `swept` go to one xdist worker (scripts/test's --dist loadgroup),
# which launches it once.
ON_SWEPT = pytest.mark.xdist_group("swept")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> Swept:
    """The sweep, launched once (a test that relaunches it checks the runs it finds against
    these, taken before)."""
    tmp = tmp_path_factory.mktemp("swept")
    first = run_cli("run.py", *sweep_args(tmp, tiny_root, SEEDS))
    assert first.returncode == 0, first.stderr[-3000:]
    runs = {r.info.run_name: r for r in runs_in(tmp, "sweep")}
    histories = {name: history_of(tmp, r.info.run_id) for name, r in runs.items()}
    (parent,) = runs_in(tmp, "sweep", kind="sweep")
    return Swept(tmp, runs, histories, parent)


def launches_of(where: Path, parent: Run) -> list[Run]:
    """The launches of the sweep of `parent`, first to last."""
    runs = runs_in(where, "sweep", kind="launch")
    mine = [r for r in runs if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    return sorted(mine, key=lambda r: int(r.data.tags["launch"]))


def assert_untouched(where: Path, swept: Swept) -> None:
    """The sweep's runs are still as it left them: status, end, params, tags and metrics."""
    for name, before in swept.runs.items():
        after = MlflowClient(store_uri(where)).get_run(before.info.run_id)
        assert (after.info.status, after.info.end_time) == ("FINISHED", before.info.end_time)
        assert (after.data.params, after.data.tags) == (before.data.params, before.data.tags)
        assert history_of(where, before.info.run_id) == swept.histories[name], name


@ON_SWEPT
def test_a_sweep_logs_one_nested_run_per_job_with_what_defines_it(swept, tmp_path, tiny_root):
    assert swept.parent.info.status == "FINISHED"
    assert sorted(swept.runs) == FIRST
    (launch,) = launches_of(swept.tmp, swept.parent)
    assert (launch.info.run_name, launch.info.status) == ("launch-1", "FINISHED")
    assert launch.data.tags["sweep_id"] == swept.parent.data.tags["sweep_id"]
    assert launch.data.tags["host"] == socket.gethostname()
    assert launch.data.tags["overrides"] == swept.parent.data.tags["overrides"]
    files = locate(tiny_root, system_dir=None, download=False)
    data = read_fashion_mnist(
        files, normalize=True, mean=None, std=None, train_size=None, test_size=None, checksums=None
    )
    client = MlflowClient(store_uri(swept.tmp))
    for name, run in swept.runs.items():
        tags, params = run.data.tags, run.data.params
        model, seed = name.split("-seed")
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == swept.parent.info.run_id
        assert tags["sweep_id"] == swept.parent.data.tags["sweep_id"]
        assert (tags["kind"], tags["model"], tags["seed"]) == ("train", model, seed)
        assert tags["git_commit"] == git("rev-parse", "HEAD")
        assert tags["git_dirty"] == str(bool(git("status", "--porcelain"))).lower()
        assert (tags["device"], tags["torch_version"]) == ("cpu", torch.__version__)
        assert int(tags["torch_threads"]) >= 1
        assert tags["host"] == socket.gethostname()
        assert tags["engine_version"] == engine_version()
        assert tags["dataset_digest"] == files.digest
        assert params == EXPERIMENT_PARAMS | {"model.name": model, "seed": seed}
        assert tags["config_fingerprint"] == CONFIG_FINGERPRINTS[name]
        parts = {
            "config": CONFIG_FINGERPRINTS[name],
            "engine": engine_version(),
            "data": files.digest,
        }
        blob = json.dumps(parts, sort_keys=True).encode()
        assert tags["fingerprint"] == hashlib.sha256(blob).hexdigest()[:16]
        assert f"model={model}" in tags["overrides"].split()
        assert f"seed={seed}" in tags["overrides"].split()
        # Where and how as tags, but the URI (it may hold credentials) and force (per launch).
        place = {"data.root": str(tiny_root), "trainer.checkpoint_dir": str(swept.tmp / "ckpt")}
        assert {k: tags.get(k) for k in PLACE_KEYS} == PLACE_TAGS | place
        history = swept.histories[name]
        assert set(history) == METRICS
        assert all([s for s, _ in points] == [1, 2] for points in history.values())
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {".hydra", "model"} <= artifacts
        hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, ".hydra")}
        assert ".hydra/config.yaml" in hydra_files and ".hydra/overrides.yaml" in hydra_files
        # The saved weights are the final ones: they give the last pass's logged test metrics.
        net = build_model(model)
        net.load_state_dict(
            torch.load(
                client.download_artifacts(run.info.run_id, "model/state_dict.pt", str(tmp_path)),
                weights_only=True,
            )
        )
        with torch.no_grad(), eval_mode(net):
            final = full_pass(net, data.test.x, data.test.y, chunk_size=10_000)
        (_, acc), (_, loss) = history["test/acc"][-1], history["test/loss"][-1]
        assert (final.accuracy, final.loss) == (acc, pytest.approx(loss, rel=1e-5)), name
    assert len({r.data.tags["fingerprint"] for r in swept.runs.values()}) == 4


@ON_SWEPT
def test_a_relaunch_skips_finished_runs_and_more_seeds_run_only_the_new_ones(swept, tiny_root):
    tmp = swept.tmp  # the same command again, into the same store
    finished = sorted((name, r.info.run_id) for name, r in swept.runs.items())

    again = run_cli("run.py", *sweep_args(tmp, tiny_root, SEEDS))
    assert again.returncode == 0, again.stderr[-3000:]
    assert skipped(output(again)) == finished
    assert_untouched(tmp, swept)
    assert {r.info.run_id for r in runs_in(tmp, "sweep")} == {i for _, i in finished}
    (parent,) = runs_in(tmp, "sweep", kind="sweep")  # the same sweep: the same parent run
    assert (parent.info.run_id, parent.info.status) == (swept.parent.info.run_id, "FINISHED")
    # The parent spans both launches; each launch is a nested run of its own time.
    first, second = launches_of(tmp, parent)
    assert [r.info.status for r in (first, second)] == ["FINISHED", "FINISHED"]
    assert parent.info.start_time <= first.info.start_time
    assert first.info.end_time <= swept.parent.info.end_time <= second.info.start_time
    assert second.info.start_time <= second.info.end_time <= parent.info.end_time

    more = run_cli("run.py", *sweep_args(tmp, tiny_root, f"{SEEDS},2"))
    assert more.returncode == 0, more.stderr[-3000:]
    assert skipped(output(more)) == finished
    (grown,) = [
        p for p in runs_in(tmp, "sweep", kind="sweep") if p.info.run_id != parent.info.run_id
    ]
    assert [r.info.run_name for r in launches_of(tmp, grown)] == ["launch-1"]  # another sweep
    assert_untouched(tmp, swept)
    new = [r for r in runs_in(tmp, "sweep") if r.info.run_name not in swept.runs]
    assert sorted(r.info.run_name for r in new) == ["bn-seed2", "plain-seed2"]
    for run in new:
        assert run.info.status == "FINISHED"
        for points in history_of(tmp, run.info.run_id).values():
            assert [s for s, _ in points] == [1, 2]


@ON_SWEPT
def test_force_reruns_a_finished_configuration_in_a_new_run(swept, tmp_path, tiny_root):
    shutil.copy(swept.tmp / "mlflow.db", tmp_path / "mlflow.db")  # the runs' artifacts stay put
    plain_seed0 = job_args(tmp_path, tiny_root, "sweep", *GRID[1:], "model=plain", "seed=0")
    forced = run_cli("run.py", *plain_seed0, "force=true")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "skip" not in output(forced)
    old = swept.runs["plain-seed0"]
    (new,) = [
        r
        for r in runs_in(tmp_path, "sweep")
        if r.info.run_name == "plain-seed0" and r.info.run_id != old.info.run_id
    ]
    assert (new.info.run_name, new.info.status) == ("plain-seed0", "FINISHED")
    assert new.data.tags["fingerprint"] == old.data.tags["fingerprint"]
    new_history = history_of(tmp_path, new.info.run_id)
    assert untimed(new_history) == untimed(swept.histories["plain-seed0"])  # the same bits
    assert_untouched(tmp_path, swept)  # the earlier run is kept as it was


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, tiny_root):
    args = [
        "-m",
        *job_args(tmp_path, tiny_root, "faults", "optimizer.lr=0.04,1e5", "trainer.epochs=1"),
    ]
    result = run_cli("run.py", *args)
    assert result.returncode == 1
    runs = {r.data.params["optimizer.lr"]: r for r in runs_in(tmp_path, "faults")}
    assert runs["0.04"].info.status == "FINISHED"
    diverged = runs["100000.0"]
    assert diverged.info.status == "FAILED"
    assert diverged.data.tags["diverged"] == "true" and diverged.data.tags["diverged_pass"] == "1"
    error = diverged.data.tags["error"]
    assert error.startswith("training diverged: non-finite loss at pass 1, step ")
    assert error_lines(result.stderr) == [f"error: plain-seed0 FAILED: {error}"]
    assert "Traceback" not in result.stderr
    (parent,) = runs_in(tmp_path, "faults", kind="sweep")
    assert parent.info.status == "FAILED"


def test_a_run_that_cannot_be_ended_fails_in_one_line_and_ends_when_relaunched(tmp_path, tiny_root):
    args = job_args(tmp_path, tiny_root, "ending", "trainer.epochs=1")
    # The run's Hydra folder holds a "YAML file" that is a folder: its artifacts cannot be logged.
    broken = tmp_path / "outputs" / ".hydra" / "broken.yaml"
    broken.mkdir(parents=True)
    result = run_cli("run.py", *args)
    assert result.returncode == 1
    (failed,) = runs_in(tmp_path, "ending")
    error = failed.data.tags["error"]
    assert failed.info.status == "FAILED" and error.startswith("[Errno 21] Is a directory")
    assert error_lines(result.stderr) == [
        f"error: plain-seed0 FAILED as its run was ended ({error}); its passes are logged and "
        "its checkpoint kept: relaunch to end it"
    ]
    assert "Traceback" not in result.stderr
    client = MlflowClient(store_uri(tmp_path))
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}

    broken.rmdir()
    again = run_cli("run.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = runs_in(tmp_path, "ending")
    assert (run.info.run_id, run.info.status) == (failed.info.run_id, "FINISHED")
    assert [s for s, _ in history_of(tmp_path, run.info.run_id)["test/acc"]] == [1]
    assert "model" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_failed_run_exits_in_one_line_and_resumes_in_place_once_repaired(tmp_path, tiny_root):
    args = job_args(tmp_path, tiny_root, "single", "trainer.epochs=1")
    result = run_cli("run.py", *args, "trainer.device=cuda")
    assert result.returncode == 1
    assert error_lines(result.stderr) == [
        "error: plain-seed0 FAILED: trainer.device=cuda but no CUDA GPU is visible; "
        "use trainer.device=cpu"
    ]
    (failed,) = runs_in(tmp_path, "single")
    assert failed.info.status == "FAILED" and "CUDA" in failed.data.tags["error"]
    client = MlflowClient(store_uri(tmp_path))
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}

    # The device is not part of what the run computes: the same run, resumed on a device here.
    repaired = run_cli("run.py", *args, "trainer.device=auto")
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert f"resume plain-seed0: run {failed.info.run_id}" in output(repaired)
    (run,) = runs_in(tmp_path, "single")
    assert (run.info.run_id, run.info.status) == (failed.info.run_id, "FINISHED")
    assert "error" not in run.data.tags
    assert (run.data.tags["device"], run.data.tags["trainer.device"]) == ("cpu", "auto")
    assert [s for s, _ in history_of(tmp_path, run.info.run_id)["test/acc"]] == [1]


def test_relative_paths_resolve_from_the_project_root_and_the_environment_names_the_store(
    tmp_path, tiny_root
):
    elsewhere = tmp_path / "launched_from"
    elsewhere.mkdir()

    def relative(path: Path) -> str:
        return os.path.relpath(path, PROJECT_ROOT)

    args = [
        f"data.root={relative(tiny_root)}",
        "data.verify=false",
        "trainer.device=cpu",
        f"trainer.checkpoint_dir={relative(tmp_path / 'ckpt')}",
        "tracking.experiment=rel",
        f"hydra.run.dir={tmp_path / 'outputs'}",
        "trainer.epochs=1",
    ]  # tracking.uri left null: $MLFLOW_TRACKING_URI names the store, relative to the root too
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{relative(tmp_path / 'store')}/mlflow.db"}
    result = run_cli("run.py", *args, env=env, cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_in(tmp_path / "store", "rel")
    assert run.info.status == "FINISHED"
    (dataset_input,) = run.inputs.dataset_inputs
    assert json.loads(dataset_input.dataset.source) == {"uri": raw_dir(tiny_root).as_uri()}
    # The run's claim on its configuration stays beside its (deleted) checkpoints.
    assert [p.name for p in (tmp_path / "ckpt").rglob("*.lock")] == [
        f"{run.data.tags['config_fingerprint']}.lock"
    ]
    assert list(elsewhere.iterdir()) == []
