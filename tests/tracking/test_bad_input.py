"""Bad input through the CLI: one `error:` line naming the problem and the fix, a non-zero exit,
and the store's earlier runs untouched (no other store used instead)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support.cli import error_lines, job_args, run_cli
from support.data import real_data_location, without_real_data
from support.server import free_port
from support.stores import store_uri

from hw3.engine.files import OFFICIAL_MD5, raw_dir, resolve
from hw3.tracking.record import log_values
from hw3.tracking.store import connect, experiment_id

pytestmark = [
    pytest.mark.slow,  # a dozen CLI runs: about a minute on two cores
    # The cases share `outcomes` (every run made at once): one xdist worker makes it.
    pytest.mark.xdist_group("bad_input"),
]


@dataclass(frozen=True)
class Case:
    """One bad invocation and what its error line must say."""

    overrides: tuple[str, ...]
    says: tuple[str, ...]  # fragments of the one error line: the problem, then the fix
    uri: str | None = None  # a bad store instead of the case's own; {tmp} is the case's folder
    sweep: bool = False  # launched with -m
    data: str = "tiny"  # tiny | truncated | corrupted (the official files, one byte changed)


HINT = "python run.py --help"
UNREACHABLE = f"http://127.0.0.1:{free_port()}"
CORRUPTED = "t10k-labels-idx1-ubyte"  # checked last: the three files before it pass
CASES = {
    "typo": Case(("trainer.epoch=3",), ("Key 'epoch' not in 'TrainerConfig'", HINT)),
    "wrong_type": Case(("trainer.epochs=abc",), ("trainer.epochs=abc", "Integer", HINT)),
    "out_of_range": Case(("optimizer.lr=-1",), ("optimizer.lr=-1.0", "> 0", "optimizer.lr=")),
    "unknown_model": Case(
        ("model=resnet",), ("model/resnet", "bn, bn_noisy, gn, plain, stride", HINT)
    ),
    "negative_noise": Case(
        ("model=bn_noisy", "model.noise_mean=-0.5"),
        ("invalid model.noise_mean=-0.5", "it must be >= 0", "set model.noise_mean=VALUE"),
    ),
    "groups_not_dividing_the_channels": Case(
        ("model=gn", "model.groups=3"),
        ("invalid model.groups=3", "one of 1, 2, 4, 8, 16", "set model.groups=VALUE"),
    ),
    "two_modes": Case(
        ("--cfg", "job"), ("Only one of --run, --multirun, --cfg", "give one"), sweep=True
    ),
    "truncated_file": Case(
        (), ("train-images-idx3-ubyte", "truncated", "place the official files"), data="truncated"
    ),
    "store_under_a_file": Case(
        (), ("a_file", "tracking.uri=sqlite:///PATH"), uri="sqlite:///{tmp}/a_file/mlflow.db"
    ),
    "unknown_scheme": Case((), ("'foo'", "use sqlite:///PATH/mlflow.db"), uri="foo://x"),
    "unreachable_server": Case((), ("unreachable", "scripts/mlflow-server"), uri=UNREACHABLE),
    "unreachable_server_sweep": Case(
        ("model=plain,bn",), ("unreachable", "scripts/mlflow-server", "no job"), UNREACHABLE, True
    ),
    "corrupted_official_file": Case(
        ("data.verify=true", "data.train_size=512", "data.test_size=256"),
        (
            "error: plain-seed0 FAILED: /",
            f"/FashionMNIST/raw/{CORRUPTED}: MD5 ",
            f" is not the official {OFFICIAL_MD5[CORRUPTED]}; place the official files in",
        ),
        data="corrupted",
    ),
}


def snapshot(uri: str) -> dict[str, tuple]:
    """Every run of the store: status, params, tags and metric histories, by run id."""
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = {}
    for run in client.search_runs(experiments):
        run_id, data = run.info.run_id, run.data
        history = {k: client.get_metric_history(run_id, k) for k in data.metrics}
        points = {k: [(m.step, m.value) for m in ms] for k, ms in history.items()}
        runs[run_id] = (run.info.status, data.params, data.tags, points)
    return runs


def official_copy(root: Path) -> Path | None:
    """The official files, decompressed under the fresh `root`; None where there are none."""
    location = real_data_location(root)
    if location is None:
        return None
    raw = resolve(location[0], system_dir=location[1], download=False)
    if raw != raw_dir(root):
        shutil.copytree(raw, raw_dir(root))
    return root


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path) -> dict:
    """Every case run at once, each on its own copy of a store holding one FINISHED run."""
    template = tmp_path_factory.mktemp("template")
    store = connect(store_uri(template))
    experiment = experiment_id(store, "bad")
    run = store.client.create_run(experiment, tags={"kind": "train"}, run_name="earlier")
    log_values(store, run.info.run_id, metrics={"test/acc": 0.5}, step=1)
    log_values(store, run.info.run_id, params={"seed": 0}, tags={"model": "plain"})
    store.client.set_terminated(run.info.run_id, "FINISHED")

    truncated = tmp_path_factory.mktemp("truncated")
    shutil.copytree(tiny_root, truncated, dirs_exist_ok=True)
    images = truncated / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    roots = {"tiny": tiny_root, "truncated": truncated}
    if (corrupted := official_copy(tmp_path_factory.mktemp("corrupted"))) is not None:
        labels = raw_dir(corrupted) / CORRUPTED
        data = bytearray(labels.read_bytes())
        data[-1] = (data[-1] + 1) % 10  # another valid label: only the MD5 can tell
        labels.write_bytes(bytes(data))
        roots["corrupted"] = corrupted

    def run(name: str) -> tuple | None:
        case, tmp = CASES[name], tmp_path_factory.mktemp(name)
        if case.data not in roots:
            return None
        shutil.copy(template / "mlflow.db", tmp / "mlflow.db")
        (tmp / "a_file").touch()
        uri = case.uri and case.uri.format(tmp=tmp)
        args = job_args(tmp, roots[case.data], "bad", "trainer.epochs=1", *case.overrides, uri=uri)
        # Were the bad store ignored, $MLFLOW_TRACKING_URI would be the next in line.
        env = {"MLFLOW_TRACKING_URI": store_uri(tmp)}
        result = run_cli("run.py", *(["-m"] if case.sweep else []), *args, env=env, timeout=180)
        return tmp, result

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(CASES, pool.map(run, CASES), strict=True))
    return {"before": snapshot(store_uri(template)), **results}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_leaves_the_store_intact(outcomes, name):
    if outcomes[name] is None:
        without_real_data("the official FashionMNIST files are not on this machine")
    case, (tmp, result) = CASES[name], outcomes[name]
    assert result.returncode == 1
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in case.says:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.stderr

    before, after = outcomes["before"], snapshot(store_uri(tmp))
    assert {k: after[k] for k in before} == before
    new = [status for run_id, (status, *_) in after.items() if run_id not in before]
    assert new == (["FAILED"] if case.data != "tiny" else [])  # bad data: the job's run FAILED
    if case.sweep:
        assert not (tmp / "multirun" / "0").exists()  # no job was launched
