"""What a figure costs against the seeds it shows: every figure of a synthetic study of plain,
bn and stride with N seeds each, drawn and saved as PNG, timed in one process.

The study is made in memory (no store): per run and pass, train/test loss and accuracy, L̂ and
the time per pass, drawn at random around values like the smoke sweep's (seeded), so that seeds
differ as real ones do. A figure's cost should not grow with what no reader can see: compare
the seconds and the count of text artists at 3 and at 2,000 seeds.

    python benchmarks/figures.py                          # 3 and 2000 seeds, PNGs in a temp folder
    python benchmarks/figures.py --seeds 667 --out docs/img --only paired   # docs' paired figure
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # hw3 need not be installed

from hw3.analysis import figures  # noqa: E402
from hw3.analysis.findings import compute  # noqa: E402
from hw3.analysis.intervals import ErrorBar  # noqa: E402
from hw3.analysis.study import Study, TrainRun, aggregate  # noqa: E402

MODELS = {"plain": 20.0, "bn": 15.0, "stride": 22.0}  # model → mean L̂ of its runs
PASSES = 2


def synthetic(seeds: int, rng: np.random.Generator) -> Study:
    """A study of MODELS × `seeds` FINISHED runs, PASSES passes each, min–max error bars."""
    runs, rows = [], []
    for model, smoothness in MODELS.items():
        for seed in range(seeds):
            run_id = f"{model}-{seed}"
            params = {"model.name": model, "optimizer.lr": "0.04"}
            runs.append(TrainRun(run_id, run_id, model, seed, "FINISHED", seed, params=params))
            for p in range(1, PASSES + 1):
                values = {
                    "train/loss": 0.6 / p + rng.normal(0, 0.03),
                    "test/loss": 0.65 / p + rng.normal(0, 0.03),
                    "train/acc": 0.75 + 0.05 * p + rng.normal(0, 0.01),
                    "test/acc": 0.74 + 0.05 * p + rng.normal(0, 0.01),
                    "smoothness/L": smoothness + rng.normal(0, 3),
                    "time/train_pass_s": 3 + rng.normal(0, 0.2),
                }
                rows += [(run_id, model, seed, p, k, v) for k, v in values.items()]
    tidy = pd.DataFrame(rows, columns=["run", "model", "seed", "pass", "metric", "value"])
    bar = ErrorBar("range", 0.95, 10_000, 0)
    groups = tuple(MODELS)
    labels = {r.run_id: r.model for r in runs}
    summary = aggregate(tidy, groups, bar)
    return Study("synthetic", "0", "all", "", bar, tuple(runs), (), labels, groups, tidy, summary)


def measure(seeds: int, out: Path, only: list[str]) -> dict:
    """Each figure of a `seeds`-seed study drawn and saved into `out`: seconds and text artists."""
    found = compute(synthetic(seeds, np.random.default_rng(0)))
    result = {}
    for name in only:
        started = time.perf_counter()
        fig = figures.FIGURES[name](found)
        if fig is None:
            continue
        figures.save(fig, out, name, ["png"])
        texts = len(fig.findobj(lambda a: type(a).__name__ in ("Text", "Annotation")))
        result[name] = {"s": round(time.perf_counter() - started, 3), "texts": texts}
    return result


def main() -> None:
    """Time every figure at each --seeds; print a table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 2000], help="per model")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: a temp folder)")
    parser.add_argument("--only", nargs="+", choices=list(figures.FIGURES), help="these figures")
    args = parser.parse_args()
    only = args.only or list(figures.FIGURES)
    results = {}
    for n in args.seeds:
        out = args.out or Path(tempfile.mkdtemp(prefix=f"hw3-figures-{n}-"))
        out.mkdir(parents=True, exist_ok=True)
        results[n] = measure(n, out, only)
        print(f"{n} seeds per model: {out}", file=sys.stderr)
    print("| figure | " + " | ".join(f"{n} seeds: s, text artists" for n in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in results[args.seeds[0]]:
        cells = [f"{r[name]['s']}, {r[name]['texts']}" for r in results.values() if name in r]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps({"check": "figures", "results": results}))


if __name__ == "__main__":
    main()
