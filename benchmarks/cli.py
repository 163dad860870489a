"""Seconds and peak memory of hw3's commands against bare Hydra and MLflow references.

Every figure is a whole process (a fresh interpreter), the median of --repeats runs; the commands
and their references take turns within each round, so a machine whose load drifts slows both.

    run.py --help, run.py --cfg job   ÷ a bare @hydra.main app's --help            (goal: ≤ 2)
    relaunch of experiment=smoke,     ÷ a bare Hydra multirun of as many no-op jobs
      every job skipped                 + opening the store with MLflow and one search
                                                                      (goal: ≤ 1.3 × that + 1 s)
    analyze.py experiment=smoke       seconds                                      (goal: ≤ 5 s)

Peak memory is each process's own (its maximum resident set, from wait4). Set-up, not timed:
the smoke sweep trained once into a temporary store (with --train-size, --test-size, --passes:
skipping a job costs the same whatever it trained on); with it, `first_line_s` is how long a job
of that sweep took from Hydra's start of it to its first line. `--before DIR` times the same
commands of another checkout (say the commit before a change, `git worktree add DIR COMMIT`),
in the same rounds, against the same store. Prints a table, then one JSON line.

    python benchmarks/cli.py                                        # ~5 min on an idle 2-core CPU
    python benchmarks/cli.py --before /tmp/hw3-before --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "hw3-smoke"  # conf/experiment/smoke.yaml's
JOBS = 6  # its grid: plain, bn, stride × seeds 0, 1
BARE_APP = """
import hydra

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    pass

if __name__ == "__main__":
    main()
"""
SEARCH = """
import sys
from mlflow.tracking import MlflowClient

client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name(sys.argv[2]).experiment_id
client.search_runs([experiment], "tags.kind = 'train'")
"""
REFERENCES = ("bare_help", "bare_multirun", "store_search")
COMMANDS = ("help", "cfg", "relaunch", "analyze")
GOALS = {"help": "≤ 2×", "cfg": "≤ 2×", "relaunch": "≤ 1.3× + 1 s", "analyze": "≤ 5 s"}
_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^]]+)\]")


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float, str]:
    """Run `cmd` to its end: (wall seconds, CPU seconds, its peak resident memory in MiB, what
    it printed)."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{text[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024, text  # ru_maxrss: KiB on Linux


def first_lines(text: str) -> list[float]:
    """Per job of a sweep's log: seconds from Hydra's start of it (`#n : …`) to its first line."""
    seconds, started = [], None
    for line in text.splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        at = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f")
        if found[2] == "HYDRA" and re.search(r"\t#\d+ : ", line):
            started = at
        elif found[2] == "hw3" and started is not None:
            seconds.append((at - started).total_seconds())
            started = None
    return seconds


def figures(seconds: dict[str, list[float]], checkouts: dict[str, Path]) -> dict:
    """Medians of the references and of each checkout's commands, each with its ratio to the
    bound it is held to (the bound itself for the relaunch: the issue's goal is 1.3× + 1 s)."""
    median = {name: statistics.median(s) for name, s in seconds.items()}
    relaunch_bound = median["bare_multirun"] + median["store_search"]
    bounds = {"help": median["bare_help"], "cfg": median["bare_help"]}
    bounds |= {"relaunch": relaunch_bound, "analyze": 5.0}
    out: dict = {
        "references": {k: round(median[k], 2) for k in REFERENCES},
        "relaunch_bound": round(relaunch_bound, 2),
    }
    for command in COMMANDS:
        for name in checkouts:
            s = median[f"{name}:{command}"]
            out[f"{name}:{command}"] = {"s": round(s, 2), "ratio": round(s / bounds[command], 2)}
    return out


def main() -> None:
    """Set up the store, then time every command and reference --repeats times, in turns."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command")
    parser.add_argument("--before", type=Path, help="another checkout to time the same way")
    parser.add_argument("--data-root", default=str(PROJECT_ROOT / "data"), help="data.root")
    parser.add_argument("--train-size", type=int, default=512, help="set-up sweep's examples")
    parser.add_argument("--test-size", type=int, default=256, help="set-up sweep's test examples")
    parser.add_argument("--passes", type=int, default=1, help="set-up sweep's passes")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hw3-cli-"))
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true", "HYDRA_FULL_ERROR": "1"}
    py = sys.executable
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    sweep = [
        "-m", "experiment=smoke", f"data.root={args.data_root}",
        f"data.train_size={args.train_size}", f"data.test_size={args.test_size}",
        f"trainer.epochs={args.passes}", "trainer.device=cpu", f"tracking.uri={uri}",
        f"trainer.checkpoint_dir={tmp / 'ckpt'}", f"hydra.sweep.dir={tmp / 'multirun'}",
    ]  # fmt: skip
    analysis = ["experiment=smoke", f"tracking.uri={uri}", f"out={tmp / 'report'}"]
    analysis.append(f"hydra.run.dir={tmp / 'outputs'}")
    (tmp / "bare.py").write_text(BARE_APP)
    (tmp / "search.py").write_text(SEARCH)

    *_, trained = timed([py, "run.py", *sweep], PROJECT_ROOT, env)
    first = first_lines(trained)
    bare_sweep = [f"+job=range(0,{JOBS})", f"hydra.sweep.dir={tmp / 'bare'}"]
    commands = {
        "bare_help": ([py, "bare.py", "--help"], tmp),
        "bare_multirun": ([py, "bare.py", "-m", *bare_sweep], tmp),
        "store_search": ([py, "search.py", uri, EXPERIMENT], tmp),
    }
    checkouts = {"after": PROJECT_ROOT} | ({"before": args.before} if args.before else {})
    for name, root in checkouts.items():
        commands[f"{name}:help"] = ([py, "run.py", "--help"], root)
        commands[f"{name}:cfg"] = ([py, "run.py", "--cfg", "job"], root)
        commands[f"{name}:relaunch"] = ([py, "run.py", *sweep], root)
        commands[f"{name}:analyze"] = ([py, "analyze.py", *analysis], root)
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    memory: dict[str, float] = dict.fromkeys(commands, 0.0)
    for _ in range(args.repeats):
        for name, (cmd, cwd) in commands.items():
            s, cpu_s, mib, text = timed(cmd, cwd, env)
            if name.endswith(":relaunch") and text.count("already FINISHED") != JOBS:
                raise SystemExit(f"{name} did not skip all {JOBS} jobs:\n{text[-3000:]}")
            wall[name].append(s)
            cpu[name].append(cpu_s)
            memory[name] = max(memory[name], mib)
    rows = {"wall": figures(wall, checkouts), "cpu": figures(cpu, checkouts)}
    print(f"\nmedian of {args.repeats} whole-process runs each, in turns, on {os.cpu_count()} CPUs")
    for clock, row in rows.items():
        ref = row["references"]
        print(
            f"{clock} s of the references: bare --help {ref['bare_help']}; bare multirun of "
            f"{JOBS} no-op jobs {ref['bare_multirun']} + MLflow store open and one search "
            f"{ref['store_search']} = {row['relaunch_bound']}"
        )
    names = [f"{n}: wall s (÷ bound), CPU s (÷ bound), peak MiB" for n in checkouts]
    print(f"\n| command | goal | {' | '.join(names)} |\n|---|---|" + "---|" * len(checkouts))
    for command in COMMANDS:
        cells = []
        for name in checkouts:
            w, c = rows["wall"][f"{name}:{command}"], rows["cpu"][f"{name}:{command}"]
            mib = round(memory[f"{name}:{command}"])
            cells.append(f"{w['s']} ({w['ratio']}×), {c['s']} ({c['ratio']}×), {mib}")
        print(f"| {command} | {GOALS[command]} | " + " | ".join(cells) + " |")
    if first:
        print(f"\na job's first line, after Hydra starts it: {statistics.median(first):.2f} s")
    print(
        json.dumps(
            {
                "check": "cli",
                "repeats": args.repeats,
                "wall": rows["wall"],
                "cpu": rows["cpu"],
                "peak_mib": {name: round(mib) for name, mib in memory.items()},
                "first_line_s": round(statistics.median(first), 2) if first else None,
            }
        )
    )


if __name__ == "__main__":
    main()
