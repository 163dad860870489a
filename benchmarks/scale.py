"""Studies of thousands of runs: a skipped relaunch and the analyses against the store's size,
over SQLite and over a tracking server, in one process.

The stores (built once, kept under --cache, keyed by engine version): `base`, a real tiny sweep
(plain, bn, stride × seed 0, 10 passes on 256 training examples, run by run.py), and for each N
of --sizes, `base` plus N copies of its runs with new seeds (1000, 1001, …), logged through the
MLflow client as run.py logs them: the same params, tags, metric histories and engine version,
the seed's own fingerprint (so a relaunch of those seeds skips them), three runs per copy under a
sweep parent of its own. Each measurement is a subprocess (`run.py`, `analyze.py`) timed from
start to exit, its peak RSS taken from the kernel; ratios are against the same command on `base`
in the same process. Prints one markdown table.

    python benchmarks/scale.py --sizes 1000 10000              # builds the stores the first time
    python benchmarks/scale.py --sizes 1000 --stores sqlite --timeout 300
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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


def analysis_args(uri: str, work: Path, *extra: str) -> list[str]:
    """analyze.py's arguments for EXPERIMENT in `uri` (its files under `work`)."""
    return [
        sys.executable, str(PROJECT_ROOT / "analyze.py"), f"tracking.uri={uri}",
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


def new_fingerprints(model: str, seeds: range, digest: str) -> dict[int, tuple[str, str]]:
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


def add_copies(client: MlflowClient, experiment: str, base: list, first: int, last: int) -> None:
    """Copies first..last-1 of the base sweep's runs (copy k: seed FIRST_COPY_SEED + k)."""
    digest = base[0].data.tags["dataset_digest"]
    seeds = range(FIRST_COPY_SEED + first, FIRST_COPY_SEED + last)
    prints = {
        r.data.tags["model"]: new_fingerprints(r.data.tags["model"], seeds, digest) for r in base
    }
    check = new_fingerprints(base[0].data.tags["model"], range(1), digest)[0][0]
    if check != base[0].data.tags["fingerprint"]:
        raise SystemExit("scale: the copies' fingerprints would not be run.py's")
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
    client = MlflowClient(sqlite_uri(folder))
    # Built once: without an fsync per commit (5× faster here); the file is whole once we exit.
    engine = client._tracking_client.store.engine
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))
    engine.dispose()
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    found = client.search_runs([experiment], "tags.kind = 'train' and tags.seed = '0'")
    base_runs = [client.get_run(r.info.run_id) for r in found]  # with their inputs
    copies, done_copies = size // 3, start // 3
    print(f"scale: adding {size - start} runs to {folder}", file=sys.stderr)
    step = 100
    for first in range(done_copies, copies, step):
        add_copies(client, experiment, base_runs, first, min(first + step, copies))
        print(f"scale: {3 * min(first + step, copies)} of {size} runs", file=sys.stderr)
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
) -> dict[str, Outcome]:
    """On one store: the skipped relaunch (unless not `relaunch`), the analysis of the tiny
    sweep and of the whole study; with `seeds`, the skipped relaunch of that many copies' seeds
    (3 jobs each)."""
    out = {"relaunch": Outcome(None, failure="not measured: another engine version's store")}
    log = work / "relaunch.log"
    if relaunch:
        out["relaunch"] = one = timed(sweep_args(uri, cache, work), timeout, log)
        if one.seconds is not None and len(_SKIPPED.findall(log.read_text())) != 3:
            out["relaunch"] = Outcome(None, failure="not all 3 jobs skipped")
    out["sweep"] = timed(analysis_args(uri, work, f"sweep_id={sweep_id}"), timeout, work / "a.log")
    out["study"] = timed(analysis_args(uri, work), timeout, work / "study.log")
    if seeds and relaunch:
        grid = ",".join(str(FIRST_COPY_SEED + s) for s in range(seeds))
        log = work / "many.log"
        out["many"] = many = timed(sweep_args(uri, cache, work, f"seed={grid}"), timeout, log)
        if many.seconds is not None and len(_SKIPPED.findall(log.read_text())) != 3 * seeds:
            out["many"] = Outcome(None, failure=f"not all {3 * seeds} jobs skipped")
    return out


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
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    from hw3.engine.version import engine_version

    version = args.engine_version or engine_version()
    current = version == engine_version()
    cache = args.cache / version
    if not current and not (cache / "base" / "done").is_file():
        raise SystemExit(f"scale: no stores of engine version {version} under {args.cache}")
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
                        uri, cache, work, sweep_id, args.timeout, seeds=seeds, relaunch=current
                    )
    seeds = args.relaunch_seeds if current else 0
    print("\n".join(table(results, sizes, seeds, compose_ms())))


if __name__ == "__main__":
    main()
