"""Studies of thousands of runs: a skipped relaunch and the analyses against the store's size,
over SQLite and over a tracking server, in one process.

The stores (built once, kept under --cache, keyed by engine version): `base`, a real tiny sweep
(plain, bn, stride × seed 0, 10 passes on 256 training examples, run by run.py), and for each N
of --sizes, `base` plus N // 3 copies of its three runs with new seeds (1000, 1001, …), each copy
under a sweep parent of its own (kind, sweep_id, name, a job.<fingerprint> tag per run). A copy
has its run's tags, params, metric histories (timestamps too), latest metrics, dataset input and
engine version, and the seed's own fingerprints, computed by hw3.tracking.job as run.py computes
them (so a relaunch of those seeds skips them). The copies are written by SQL into the SQLite
file, in one transaction: a 10,000-run store in about a minute on the 2-core machine under load,
where the MLflow client took about 0.1 s a run, half an hour. `--check` builds a few copies both
ways and compares the stores as the MLflow client reads them, then relaunches two copies' seeds:
all their jobs skip.
The tracking server is `mlflow server` over the same SQLite file.

Each measurement is a subprocess (`run.py`, `analyze.py`) timed from start to exit, its peak RSS
taken from the kernel; ratios are against the same command on `base` in the same process.
Prints one markdown table.

    python benchmarks/scale.py --sizes 1000 10000              # builds the stores the first time
    python benchmarks/scale.py --sizes 1000 --stores sqlite --timeout 300
    python benchmarks/scale.py --check                         # the SQL copies are the client's
    python benchmarks/scale.py --sizes 2000 10000 --before /tmp/hw3-before   # and that checkout's
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # hw3 need not be installed

from mlflow.entities import Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from sqlalchemy import event  # noqa: E402

EXPERIMENT = "scale"
SWEEP = ["model=plain,bn,stride", "seed=0", "data.train_size=256", "data.test_size=128"]
FIRST_COPY_SEED = 1000
SERVER_WAIT_S = 120


@dataclass(frozen=True)
class Outcome:
    """One timed command: seconds, peak RSS (MiB), or why there is no figure."""

    seconds: float | None
    peak_mib: float | None = None
    failure: str | None = None

    def cell(self, reference: Outcome | None = None, memory: bool = False) -> str:
        """'12.3 s', '12.3 s (1.04×)' against `reference`, '> 600 s' on timeout."""
        if self.seconds is None:
            return self.failure or "failed"
        text = f"{self.seconds:.1f} s"
        if reference is not None and reference.seconds:
            text += f" ({self.seconds / reference.seconds:.2f}×)"
        if memory and self.peak_mib is not None:
            text += f", {self.peak_mib:,.0f} MiB"
        return text


def timed(command: list[str], timeout: float, log: Path) -> Outcome:
    """Run `command` (output to `log`); its wall time and peak RSS, or a failure."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
            env=environment(), start_new_session=True,
        )  # fmt: skip
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            seconds = time.perf_counter() - started
            break
        if time.perf_counter() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            return Outcome(None, failure=f"> {timeout:.0f} s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        return Outcome(None, failure=f"exit {proc.returncode}: {tail[0][:120]}")
    return Outcome(seconds, usage.ru_maxrss / 1024)


def environment() -> dict[str, str]:
    """The subprocesses' environment: ours, without a tracking URI that would override theirs."""
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def sweep_args(uri: str, cache: Path, work: Path, *extra: str) -> list[str]:
    """run.py's arguments for the tiny sweep into `uri` (Hydra's files under `work`)."""
    return [
        sys.executable, str(PROJECT_ROOT / "run.py"), "-m", *SWEEP,
        f"data.root={cache / 'data'}", "trainer.device=cpu", f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}", f"trainer.checkpoint_dir={cache / 'ckpt'}",
        f"hydra.sweep.dir={work / 'multirun'}", *extra,
    ]  # fmt: skip


def analysis_args(uri: str, work: Path, *extra: str, project: Path = PROJECT_ROOT) -> list[str]:
    """analyze.py's arguments for EXPERIMENT in `uri` (its files under `work`), of the checkout
    `project`."""
    return [
        sys.executable, str(project / "analyze.py"), f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}", f"out={work / 'report'}",
        f"hydra.run.dir={work / 'hydra'}", *extra,
    ]  # fmt: skip


def sqlite_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def build_base(cache: Path) -> Path:
    """The store of the real tiny sweep (run once)."""
    folder = cache / "base"
    if not (folder / "done").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"scale: running the tiny sweep into {folder}", file=sys.stderr)
        done = subprocess.run(
            sweep_args(sqlite_uri(folder), cache, folder), cwd=PROJECT_ROOT, env=environment(),
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"scale: the tiny sweep failed: {done.stderr[-2000:]}")
        (folder / "done").touch()
    return folder


def new_fingerprints(model: str, seeds: Iterable[int], digest: str) -> dict[int, tuple[str, str]]:
    """(fingerprint, config_fingerprint) of the tiny sweep's `model` job at each seed, as run.py
    computes them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from hw3.tracking.job import config_fingerprint, run_fingerprint
    from hw3.tracking.schema import register

    register()
    overrides = [o for o in SWEEP if not o.startswith(("model=", "seed="))]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("config", overrides=[f"model={model}", *overrides]))
    return {
        s: (run_fingerprint(config_fingerprint(c), digest), config_fingerprint(c))
        for s in seeds
        for c in [dataclasses.replace(cfg, seed=s)]
    }


def compose_ms(rounds: int = 20) -> float:
    """Median milliseconds Hydra takes to compose one job's config of the tiny sweep, with its
    `hydra` node, in this process (a sweep composes each job twice: Hydra's basic sweeper
    checks every job's config before its launcher composes it again to run it)."""
    from hydra import compose, initialize_config_dir

    from hw3.tracking.schema import register

    register()
    job = ["model=plain", *SWEEP[1:]]
    seconds = []
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        for _ in range(rounds):
            started = time.perf_counter()
            compose("config", overrides=job, return_hydra_config=True)
            seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


@dataclass(frozen=True)
class BaseSweep:
    """The tiny sweep's rows in `base`, read once from the SQLite file: its sweep parent's row
    and its train runs' rows (plain, bn, stride at seed 0, as they started), each run's tags,
    params, metric points, latest metrics, inputs (by run id) and those inputs' tags (by input
    id), each row a dict of column → value."""

    parent: dict
    runs: list[dict]
    tags: dict[str, dict[str, str]]
    params: dict[str, dict[str, str]]
    metrics: dict[str, list[dict]]
    latest_metrics: dict[str, list[dict]]
    inputs: dict[str, list[dict]]
    input_tags: dict[str, list[dict]]


def rows_of(con: sqlite3.Connection, table: str, column: str, values: list[str]) -> list[dict]:
    """The rows of `table` whose `column` is one of `values`, as dicts (all columns)."""
    marks = ", ".join("?" * len(values))
    cursor = con.execute(f"SELECT * FROM {table} WHERE {column} IN ({marks})", values)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


def by(rows: list[dict], column: str) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row[column], []).append(row)
    return grouped


def read_base(con: sqlite3.Connection) -> BaseSweep:
    """The tiny sweep in the store `con`: its train runs at seed 0 in EXPERIMENT, the runs
    build_store's old MLflow-client copies started from (they searched for the same)."""
    ids = [
        run_id
        for (run_id,) in con.execute(
            "SELECT r.run_uuid FROM runs r JOIN experiments e USING (experiment_id) "
            "JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = 'kind' AND k.value = 'train' "
            "JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'seed' AND s.value = '0' "
            "WHERE e.name = ? AND r.lifecycle_stage = 'active' ORDER BY r.start_time",
            (EXPERIMENT,),
        )
    ]
    if not ids:
        raise SystemExit("scale: no tiny sweep in the base store")
    tags = {
        run_id: {row["key"]: row["value"] for row in rows}
        for run_id, rows in by(rows_of(con, "tags", "run_uuid", ids), "run_uuid").items()
    }
    (parent,) = {tags[run_id]["mlflow.parentRunId"] for run_id in ids}
    inputs = rows_of(con, "inputs", "destination_id", ids)
    input_ids = [row["input_uuid"] for row in inputs]
    return BaseSweep(
        parent=rows_of(con, "runs", "run_uuid", [parent])[0],
        runs=sorted(
            rows_of(con, "runs", "run_uuid", ids), key=lambda row: ids.index(row["run_uuid"])
        ),
        tags=tags,
        params={
            run_id: {row["key"]: row["value"] for row in rows}
            for run_id, rows in by(rows_of(con, "params", "run_uuid", ids), "run_uuid").items()
        },
        metrics=by(rows_of(con, "metrics", "run_uuid", ids), "run_uuid"),
        latest_metrics=by(rows_of(con, "latest_metrics", "run_uuid", ids), "run_uuid"),
        inputs=by(inputs, "destination_id"),
        input_tags=by(rows_of(con, "input_tags", "input_uuid", input_ids), "input_uuid"),
    )


TABLES = ("runs", "tags", "params", "metrics", "latest_metrics", "inputs", "input_tags")


def copy_rows(
    base: BaseSweep, copies: range, prints: dict[str, dict[int, tuple[str, str]]], clock: int
) -> dict[str, list[dict]]:
    """The rows (table → rows) of copies `copies` of the tiny sweep (copy k: seed
    FIRST_COPY_SEED + k, sweep id k in hex), as the MLflow client logged them: per copy a sweep
    parent (kind, sweep_id, its name, a job.<fingerprint> tag per run), then the three runs with
    the base runs' tags, params, metric points (timestamps too) and inputs, but their own seed,
    fingerprints, name, sweep and parent. Start and end times from `clock` (ms) on, 1 ms apart,
    each run inside its parent's span."""
    out: dict[str, list[dict]] = {table: [] for table in TABLES}

    def tags(run_id: str, values: dict[str, str]) -> None:
        out["tags"] += [
            {"key": key, "value": value, "run_uuid": run_id} for key, value in values.items()
        ]

    def row(template: dict, run_id: str, name: str, start: int, end: int) -> dict:
        artifacts = template["artifact_uri"].replace(template["run_uuid"], run_id)
        return template | {
            "run_uuid": run_id, "name": name, "status": "FINISHED", "start_time": start,
            "end_time": end, "artifact_uri": artifacts, "lifecycle_stage": "active",
            "deleted_time": None,
        }  # fmt: skip

    span = 2 * len(base.runs) + 2
    for k in copies:
        seed, sweep_id, parent = FIRST_COPY_SEED + k, f"{k:016x}", uuid.uuid4().hex
        start = clock + span * (k - copies.start)
        jobs = {}
        for i, run in enumerate(base.runs):
            run_id, model = uuid.uuid4().hex, base.tags[run["run_uuid"]]["model"]
            fp, config_fp = prints[model][seed]
            name = f"{model}-seed{seed}"
            out["runs"].append(row(run, run_id, name, start + 2 * i + 1, start + 2 * i + 2))
            tags(run_id, base.tags[run["run_uuid"]] | {
                "seed": str(seed), "fingerprint": fp, "config_fingerprint": config_fp,
                "sweep_id": sweep_id, "mlflow.parentRunId": parent, "mlflow.runName": name,
            })  # fmt: skip
            params = base.params[run["run_uuid"]] | {"seed": str(seed)}
            out["params"] += [
                {"key": key, "value": value, "run_uuid": run_id} for key, value in params.items()
            ]
            for table in ("metrics", "latest_metrics"):
                points = getattr(base, table).get(run["run_uuid"], [])
                out[table] += [point | {"run_uuid": run_id} for point in points]
            for given in base.inputs.get(run["run_uuid"], []):
                input_id = uuid.uuid4().hex
                out["inputs"].append(given | {"input_uuid": input_id, "destination_id": run_id})
                out["input_tags"] += [
                    tag | {"input_uuid": input_id}
                    for tag in base.input_tags.get(given["input_uuid"], [])
                ]
            jobs[f"job.{fp}"] = run_id
        name = f"sweep-{sweep_id[:8]}"
        out["runs"].append(row(base.parent, parent, name, start, start + span - 1))
        tags(parent, {"kind": "sweep", "sweep_id": sweep_id, "mlflow.runName": name} | jobs)
    return out


def insert(con: sqlite3.Connection, table: str, rows: list[dict]) -> None:
    """executemany of `rows` (dicts with the same keys) into `table`."""
    if rows:
        columns = list(rows[0])
        names = ", ".join(f'"{c}"' for c in columns)
        values = ", ".join(f":{c}" for c in columns)
        con.executemany(f"INSERT INTO {table} ({names}) VALUES ({values})", rows)


def add_copies(db: Path, first: int, last: int, step: int = 200) -> None:
    """Copies first..last-1 of the tiny sweep, written into the SQLite file `db` by SQL in one
    transaction (no fsync: the file is whole once it commits, and a store is rebuilt unless
    it was)."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=OFF")
        # Metric points are most of it, each indexed three ways: with 512 MiB of page cache
        # rather than SQLite's 2 MiB, a 10,000-run store took 38 s rather than 60 s here.
        con.execute("PRAGMA cache_size=-524288")
        base = read_base(con)
        digest = base.tags[base.runs[0]["run_uuid"]]["dataset_digest"]
        seeds = range(FIRST_COPY_SEED + first, FIRST_COPY_SEED + last)
        models = [base.tags[run["run_uuid"]]["model"] for run in base.runs]
        prints = {model: new_fingerprints(model, [0, *seeds], digest) for model in models}
        for run in base.runs:
            tags = base.tags[run["run_uuid"]]
            if prints[tags["model"]][0] != (tags["fingerprint"], tags["config_fingerprint"]):
                raise SystemExit("scale: the copies' fingerprints would not be run.py's")
        (latest,) = con.execute("SELECT max(end_time) FROM runs").fetchone()
        clock = max(time.time_ns() // 1_000_000, (latest or 0) + 1)  # after every run there
        con.execute("BEGIN")
        for chunk in range(first, last, step):
            copies = range(chunk, min(chunk + step, last))
            rows = copy_rows(
                base, copies, prints, clock + (2 * len(base.runs) + 2) * (chunk - first)
            )
            for table in TABLES:
                insert(con, table, rows[table])
            print(f"scale: {3 * copies.stop} runs copied", file=sys.stderr)
        con.execute("COMMIT")
    finally:
        con.close()


def add_copies_by_client(db: Path, first: int, last: int) -> None:
    """What add_copies writes, through the MLflow client as run.py logs (about 0.1 s a run): the
    reference that `--check` holds the SQL copies to."""
    client = MlflowClient(sqlite_uri(db.parent))
    engine = client._tracking_client.store.engine
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
    engine.dispose()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([experiment], "tags.kind = 'train' and tags.seed = '0'")
    base = [client.get_run(r.info.run_id) for r in found]  # with their inputs
    digest = base[0].data.tags["dataset_digest"]
    seeds = range(FIRST_COPY_SEED + first, FIRST_COPY_SEED + last)
    prints = {
        r.data.tags["model"]: new_fingerprints(r.data.tags["model"], seeds, digest) for r in base
    }
    histories = {
        r.info.run_id: [
            m for key in r.data.metrics for m in client.get_metric_history(r.info.run_id, key)
        ]
        for r in base
    }
    inputs = {r.info.run_id: r.inputs.dataset_inputs for r in base}
    for k, seed in zip(range(first, last), seeds, strict=True):
        sweep_id = f"{k:016x}"
        parent = client.create_run(
            experiment,
            run_name=f"sweep-{sweep_id[:8]}",
            tags={"kind": "sweep", "sweep_id": sweep_id},
        ).info.run_id
        jobs = {}
        for run in base:
            fp, config_fp = prints[run.data.tags["model"]][seed]
            name = f"{run.data.tags['model']}-seed{seed}"
            tags = run.data.tags | {
                "seed": str(seed), "fingerprint": fp, "config_fingerprint": config_fp,
                "sweep_id": sweep_id, "mlflow.parentRunId": parent, "mlflow.runName": name,
            }  # fmt: skip
            run_id = client.create_run(experiment, run_name=name, tags=tags).info.run_id
            params = run.data.params | {"seed": str(seed)}
            client.log_batch(
                run_id,
                metrics=histories[run.info.run_id],
                params=[Param(key, value) for key, value in params.items()],
            )
            client.log_inputs(run_id, datasets=inputs[run.info.run_id])
            client.set_terminated(run_id, "FINISHED")
            jobs[f"job.{fp}"] = run_id
        client.log_batch(parent, tags=[RunTag(key, value) for key, value in jobs.items()])
        client.set_terminated(parent, "FINISHED")


def build_store(cache: Path, base: Path, size: int, smaller: dict[int, Path]) -> Path:
    """`base` plus `size` copies of its runs, started from the largest smaller store built."""
    folder = cache / f"n{size}"
    if (folder / "done").is_file():
        return folder
    start = max((n for n in smaller if n < size), default=0)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy(smaller.get(start, base) / "mlflow.db", folder / "mlflow.db")
    print(f"scale: adding {size - start} runs to {folder}", file=sys.stderr)
    started = time.perf_counter()
    add_copies(folder / "mlflow.db", start // 3, size // 3)
    print(f"scale: built {folder} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    (folder / "done").touch()
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(folder: Path, work: Path) -> Iterator[str]:
    """`mlflow server` over the store in `folder`, as scripts/mlflow-server starts it."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", sqlite_uri(folder),
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = environment() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(work / "server.log", "a") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_WAIT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    log_path = work / "server.log"
                    raise SystemExit(f"scale: no server (see {log_path})") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def opened(kind: str, folder: Path, work: Path) -> Iterator[str]:
    """The URI of the store in `folder`: its SQLite file, or a server started over it."""
    if kind == "sqlite":
        yield sqlite_uri(folder)
    else:
        with served(folder, work) as uri:
            yield uri


def base_sweep_id(folder: Path) -> str:
    """The tiny sweep's id: its first parent run in `base` (a relaunch through a server opens
    another: the store's URI is one of its overrides)."""
    client = MlflowClient(sqlite_uri(folder))
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (first,) = client.search_runs(
        [experiment], "tags.kind = 'sweep'", max_results=1, order_by=["attributes.start_time ASC"]
    )
    return first.data.tags["sweep_id"]


_SKIPPED = re.compile(r"skip \S+: already FINISHED")


def measure(
    uri: str,
    cache: Path,
    work: Path,
    sweep_id: str,
    timeout: float,
    *,
    seeds: int = 0,
    relaunch: bool = True,
    before: Path | None = None,
) -> dict[str, Outcome]:
    """On one store: the skipped relaunch (unless not `relaunch`), the analysis of the tiny
    sweep and of the whole study (also by the checkout `before`); with `seeds`, the skipped
    relaunch of that many copies' seeds (3 jobs each)."""
    out = {"relaunch": Outcome(None, failure="not measured: another engine version's store")}
    log = work / "relaunch.log"
    if relaunch:
        out["relaunch"] = one = timed(sweep_args(uri, cache, work), timeout, log)
        if one.seconds is not None and len(_SKIPPED.findall(log.read_text())) != 3:
            out["relaunch"] = Outcome(None, failure="not all 3 jobs skipped")
    out["sweep"] = timed(analysis_args(uri, work, f"sweep_id={sweep_id}"), timeout, work / "a.log")
    out["study"] = timed(analysis_args(uri, work), timeout, work / "study.log")
    if before is not None:
        old = analysis_args(uri, work, project=before)
        out["study_before"] = timed(old, timeout, work / "study-before.log")
    if seeds and relaunch:
        grid = ",".join(str(FIRST_COPY_SEED + s) for s in range(seeds))
        log = work / "many.log"
        out["many"] = many = timed(sweep_args(uri, cache, work, f"seed={grid}"), timeout, log)
        if many.seconds is not None and len(_SKIPPED.findall(log.read_text())) != 3 * seeds:
            out["many"] = Outcome(None, failure=f"not all {3 * seeds} jobs skipped")
    return out


def view(folder: Path) -> dict[tuple, dict]:
    """What the analyses and a relaunch read of the store in `folder` through the MLflow
    client, each run under a key that names it rather than its id (train: model and seed;
    sweep: sweep id; others: sweep id and start time), every run id in a value (parent,
    job.<fingerprint> tags, artifact URI) replaced by the key of the run it names."""
    client = MlflowClient(sqlite_uri(folder))
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], max_results=50_000)
    keys = {}
    for run in runs:
        tags = run.data.tags
        kind = tags.get("kind", "?")
        if kind == "train":
            detail = (tags["model"], tags["seed"])
        elif kind == "sweep":
            detail = (tags["sweep_id"],)
        else:  # launches, analyses: base's own (its measurements add them), the same in both
            detail = (tags.get("sweep_id"), run.info.start_time)
        keys[run.info.run_id] = (kind, *detail, run.info.run_name)
    if len(set(keys.values())) != len(keys):
        raise SystemExit(f"scale: runs of {folder} that are not told apart by their key")

    def named(value: str) -> str:
        for run_id, key in keys.items():
            value = value.replace(run_id, "/".join(map(str, key)))
        return value

    out = {}
    for run in runs:
        run_id = run.info.run_id
        full = client.get_run(run_id)  # with its inputs
        out[keys[run_id]] = {
            "status": run.info.status,
            "user": run.info.user_id,
            "lifecycle_stage": run.info.lifecycle_stage,
            "artifact_uri": named(run.info.artifact_uri),
            "tags": {k: named(v) for k, v in run.data.tags.items()},
            "params": run.data.params,
            "metrics": run.data.metrics,
            "histories": {
                k: sorted(
                    (m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, k)
                )
                for k in run.data.metrics
            },
            "inputs": sorted(
                (
                    d.dataset.name,
                    d.dataset.digest,
                    d.dataset.source_type,
                    d.dataset.source,
                    d.dataset.schema,
                    d.dataset.profile,
                    sorted((t.key, t.value) for t in d.tags),
                )
                for d in full.inputs.dataset_inputs
            ),
            "times": (run.info.start_time, run.info.end_time),
        }
    return out


def differences(reference: dict[tuple, dict], ours: dict[tuple, dict]) -> list[str]:
    """How `ours` (a view) differs from `reference`, but for start and end times; and where
    `ours` breaks what the benchmark relies on: every copy starts after the tiny sweep ended,
    and inside its sweep parent's span."""
    problems = []
    for key in sorted(reference.keys() | ours.keys(), key=str):
        if key not in ours or key not in reference:
            problems.append(f"{key}: only in {'the reference' if key in reference else 'ours'}")
            continue
        for field, expected in reference[key].items():
            if field != "times" and ours[key][field] != expected:
                problems.append(f"{key}: {field} differ: {expected} vs {ours[key][field]}")
    base_end = max(
        v["times"][1] for k, v in ours.items() if k[0] == "train" and k[2] == "0"
    )  # fmt: skip
    for key, run in ours.items():
        copy = key[0] == "train" and int(key[2]) >= FIRST_COPY_SEED
        if copy:
            parent = next(
                p for k, p in ours.items() if k[0] == "sweep" and k[1] == run["tags"]["sweep_id"]
            )
            start, end = run["times"]
            if not base_end < parent["times"][0] < start <= end < parent["times"][1]:
                problems.append(f"{key}: times {run['times']} not inside {parent['times']}")
    return problems


def check(cache: Path, copies: int, timeout: float) -> None:
    """Build `copies` copies of the tiny sweep both ways, by the MLflow client and by SQL, and
    compare the stores (`view`); then relaunch the first and last copies' seeds over the SQL
    one: all their jobs must skip, and no train run may be added."""
    base = build_base(cache)
    views = {}
    for way, add in (("client", add_copies_by_client), ("sql", add_copies)):
        folder = cache / "check" / way
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(base / "mlflow.db", folder / "mlflow.db")
        started = time.perf_counter()
        add(folder / "mlflow.db", 0, copies)
        print(f"check: {copies} copies by {way}: {time.perf_counter() - started:.1f} s")
        views[way] = view(folder)
    problems = differences(views["client"], views["sql"])
    kinds = Counter(k[0] for k in views["sql"])
    print(f"check: runs per kind {dict(kinds)}, each the reference's: {not problems}")
    seeds = sorted({FIRST_COPY_SEED, FIRST_COPY_SEED + copies - 1})
    with tempfile.TemporaryDirectory(prefix="hw3-scale-") as tmp:
        work, folder = Path(tmp), cache / "check" / "sql"
        log = work / "relaunch.log"
        extra = "seed=" + ",".join(map(str, seeds))
        done = timed(sweep_args(sqlite_uri(folder), cache, work, extra), timeout, log)
        skipped = len(_SKIPPED.findall(log.read_text()))
        print(f"check: relaunch of seeds {seeds}: {done.cell()}, {skipped} jobs skipped")
        if done.seconds is None or skipped != 3 * len(seeds):
            problems.append(
                f"relaunch: {skipped} of {3 * len(seeds)} jobs skipped ({log.read_text()[-2000:]})"
            )
    trained = sum(1 for k in view(folder) if k[0] == "train")
    if trained != sum(1 for k in views["sql"] if k[0] == "train"):
        problems.append(f"relaunch: {trained} train runs after it")
    for problem in problems:
        print(f"check: {problem}")
    if problems:
        raise SystemExit(f"scale: the SQL copies differ from the client's ({len(problems)})")
    print("check: the SQL copies are the client's")


def table(
    results: dict[str, dict[str, dict[str, Outcome]]], sizes: list[int], seeds: int, ms: float
) -> list[str]:
    """The markdown table: rows per measurement and store size, a column per kind of store."""
    kinds = list(results)
    base = "3 (the sweep alone)"
    runs = {0: base} | {n: f"{3 * (n // 3) + 3:,}" for n in sizes}
    lines = [
        "| what | runs in the experiment | " + " | ".join(KINDS[k] for k in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    rows = [
        ("skipped relaunch of the 3-job sweep", "relaunch", [0, *sizes], False),
        ("analysis of that sweep (`sweep_id=`)", "sweep", [0, *sizes], False),
        ("analysis of the whole study: time, peak RSS", "study", sizes, True),
    ]
    if "study_before" in results[kinds[0]][sizes[0]]:
        rows.append(("the same, by the `--before` checkout", "study_before", sizes, True))
    for what, key, at, memory in rows:
        for i, n in enumerate(at):
            cells = [
                results[k][n][key].cell(None if n == 0 or memory else results[k][0][key], memory)
                for k in kinds
            ]
            lines.append(f"| {what if i == 0 else ''} | {runs[n]} | " + " | ".join(cells) + " |")
    if seeds:
        largest = max(sizes)
        cells = []
        for k in kinds:
            many, one = results[k][largest]["many"], results[k][largest]["relaunch"]
            if many.seconds is None or one.seconds is None:
                cells.append(many.cell())
            else:
                per_job = (many.seconds - one.seconds) / (3 * seeds - 3)
                cells.append(f"{many.seconds:.1f} s: {1000 * per_job:.0f} ms per further job")
        lines.append(
            f"| skipped relaunch of {3 * seeds} jobs (seeds {FIRST_COPY_SEED}…) | "
            f"{runs[largest]} | " + " | ".join(cells) + " |"
        )
    no_store = ["–"] * (len(kinds) - 1)
    lines.append(
        "| Hydra composing one job's config (median of 20, in process) | – | "
        + " | ".join([f"{ms:.0f} ms", *no_store])
        + " |"
    )
    return lines


KINDS = {"sqlite": "SQLite", "server": "tracking server (HTTP)"}


def main() -> None:
    """Build the stores if need be, measure on each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="copies N")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hw3-scale")
    parser.add_argument("--stores", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per command")
    parser.add_argument(
        "--relaunch-seeds", type=int, default=20,
        help="also relaunch this many copies' seeds (3 jobs each) on the largest store; 0: not",
    )  # fmt: skip
    parser.add_argument(
        "--engine-version",
        help="measure the analyses on stores built under --cache by this engine version "
        "(default: the current one; with another, relaunches are not measured: nothing skips)",
    )
    parser.add_argument(
        "--before", type=Path, help="another checkout whose analysis of the whole study is "
        "timed too, on the same stores (say `git worktree add DIR COMMIT`)",
    )  # fmt: skip
    parser.add_argument(
        "--check", type=int, nargs="?", const=6, metavar="COPIES",
        help="instead of measuring: build COPIES (default 6) copies of the tiny sweep both by "
        "the MLflow client and by SQL, compare the stores, relaunch two copies' seeds",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    from hw3.engine.version import engine_version

    version = args.engine_version or engine_version()
    current = version == engine_version()
    cache = args.cache / version
    if not current and not (cache / "base" / "done").is_file():
        raise SystemExit(f"scale: no stores of engine version {version} under {args.cache}")
    if args.check:
        check(cache, args.check, args.timeout)
        return
    base = build_base(cache)
    folders = {0: base}
    for n in sizes:
        folders[n] = build_store(cache, base, n, folders)
    sweep_id = base_sweep_id(base)
    results: dict[str, dict[int, dict[str, Outcome]]] = {}
    with tempfile.TemporaryDirectory(prefix="hw3-scale-") as tmp:
        work = Path(tmp)
        for kind in args.stores:
            results[kind] = {}
            for n, folder in folders.items():
                seeds = args.relaunch_seeds if n == max(sizes) and current else 0
                print(f"scale: {kind}, {3 * (n // 3) + 3} runs", file=sys.stderr)
                with opened(kind, folder, work) as uri:
                    results[kind][n] = measure(
                        uri,
                        cache,
                        work,
                        sweep_id,
                        args.timeout,
                        seeds=seeds,
                        relaunch=current,
                        before=args.before if n else None,
                    )
    seeds = args.relaunch_seeds if current else 0
    print("\n".join(table(results, sizes, seeds, compose_ms())))


if __name__ == "__main__":
    main()
