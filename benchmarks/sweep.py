"""Wall time of a sweep's jobs in series vs several at once on one device (engine only).

Stands in for `python run.py -m experiment=batchnorm` (plain, bn × seeds 0-4) with and
without `hydra/launcher=parallel`: the same jobs, minus Hydra and MLflow, which the GPU machine
lacks. Prints one JSON line with both wall times and their ratio.

    python benchmarks/sweep.py --device cuda --jobs 2 3 5
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from speed import CHUNK_SIZE, load_data, run_hw3  # benchmarks/ is on sys.path when run as a script

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GRID = [(model, seed) for model in ("plain", "bn") for seed in range(5)]  # experiment=batchnorm


def job(model: str, seed: int, args: argparse.Namespace) -> float:
    """One sweep job as run.py does it: load the data, train; returns its test accuracy."""
    data = load_data(args.data_root, args.train_size)
    history = run_hw3(data, model, seed, args.passes, args.device, CHUNK_SIZE)
    return history[-1]["test/acc"]


def sweep(args: argparse.Namespace, workers: int) -> float:
    """Seconds to run the whole grid with `workers` processes (1 = in series)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(job, *zip(*GRID, strict=True), [args] * len(GRID)))
    return time.perf_counter() - started


def main() -> None:
    """Time the grid in series, then with each number of parallel jobs asked for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cpu or cuda")
    parser.add_argument("--passes", type=int, default=10, help="passes per job")
    parser.add_argument("--train-size", type=int, default=None, help="first N training examples")
    parser.add_argument("--data-root", default=str(PROJECT_ROOT / "data"), help="data.root")
    parser.add_argument("--jobs", type=int, nargs="+", default=[2, 5], help="parallel job counts")
    args = parser.parse_args()
    series = sweep(args, 1)
    parallel = {n: sweep(args, n) for n in args.jobs}
    print(
        json.dumps(
            {
                "check": "sweep",
                "device": args.device,
                "runs": len(GRID),
                "passes": args.passes,
                "series_s": round(series, 1),
                "parallel_s": {n: round(s, 1) for n, s in parallel.items()},
                "speedup": {n: round(series / s, 2) for n, s in parallel.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
