"""What a command imports and reads, seen in a real process: --help and --cfg job need neither
torch nor MLflow, a relaunch whose jobs are all skipped imports no torch and reads no data, the
analysis imports no torch. (How fast each is: benchmarks/cli.py, as ratios, not in tests.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import cli_env, job_args, output, skipped
from support.data import NAMES, write_dataset
from support.stores import store_uri

from hw3.engine.files import raw_dir
from hw3.tracking.schema import PROJECT_ROOT

pytestmark = pytest.mark.slow  # interpreter starts

# Runs a script as `python script args…` would, recording every module imported and every file
# opened (Python's audit hook), written as JSON to $HW3_TRACE when the process ends.
TRACER = """
import json, os, runpy, sys
opened = []
sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open(os.environ["HW3_TRACE"], "w") as f:
        json.dump({"modules": sorted(sys.modules), "opened": opened}, f)
"""
NEVER_FOR_HELP = ("torch", "torchvision", "mlflow", "sqlalchemy", "submitit", "joblib")
TORCH = ("torch", "torchvision")
NEVER_FOR_SKIPS = (*TORCH, "submitit", "joblib", "matplotlib")  # MLflow, to search: yes
# The training and sweep machinery, which an analysis never needs (nor Hydra's sweep callback).
TRAINING = ("hw3.engine.train", "hw3.tracking.sweep", "hw3.tracking.training")


def traced(tmp: Path, script: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `python script args…` from the project root; its result and its trace."""
    trace = tmp / f"trace-{time.monotonic_ns()}.json"
    done = subprocess.run(
        [sys.executable, "-c", TRACER, str(PROJECT_ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env({"HW3_TRACE": str(trace)}),
        cwd=PROJECT_ROOT,
    )
    return done, json.loads(trace.read_text())


def loaded(trace: dict, packages: tuple[str, ...]) -> list[str]:
    """The top-level packages among `packages` that the traced process imported."""
    return sorted({m.split(".")[0] for m in trace["modules"]} & set(packages))


def data_read(trace: dict, root: Path) -> list[str]:
    """The dataset files the traced process opened (not the MD5 cache beside them)."""
    return sorted(
        {Path(p).name for p in trace["opened"] if Path(p).parent == raw_dir(root)} & set(NAMES)
    )


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"]], ids=["help", "cfg"])
@pytest.mark.parametrize("script", ["run.py", "analyze.py"])
def test_help_and_the_composed_config_import_neither_torch_nor_mlflow(tmp_path, script, args):
    done, trace = traced(tmp_path, script, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tracking:" in done.stdout  # the config, printed
    assert "hydra" in loaded(trace, ("hydra",))  # the trace sees the imports
    assert loaded(trace, NEVER_FOR_HELP) == []


def test_a_relaunch_that_skips_every_job_imports_no_torch_and_reads_no_data(tmp_path):
    root = write_dataset(tmp_path / "data", 256, 128)
    for name in NAMES:  # files older than their cached MD5s by more than the clock's granularity
        os.utime(raw_dir(root) / name, ns=(time.time_ns() - 60_000_000_000,) * 2)
    args = ["-m", *job_args(tmp_path, root, "skip", "seed=0,1", "trainer.epochs=1")]
    first, trace = traced(tmp_path, "run.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert loaded(trace, TORCH) == ["torch"]  # trained: the trace sees torch and the data read
    assert data_read(trace, root) == sorted(NAMES)

    again, trace = traced(tmp_path, "run.py", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [name for name, _ in skipped(output(again))] == ["plain-seed0", "plain-seed1"]
    assert loaded(trace, NEVER_FOR_SKIPS) == []
    assert data_read(trace, root) == []

    analysis = [f"tracking.uri={store_uri(tmp_path)}", "tracking.experiment=skip"]
    analysis += [f"out={tmp_path / 'report'}", f"hydra.run.dir={tmp_path / 'outputs'}"]
    analysed, trace = traced(tmp_path, "analyze.py", *analysis)
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    assert (tmp_path / "report" / "REPORT.md").is_file()
    assert loaded(trace, TORCH) == []
    assert sorted(m for m in trace["modules"] if m.startswith(TRAINING)) == []
