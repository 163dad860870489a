"""Wall time of a sweep's jobs in series vs several at once on one device (engine only).

Stands in for `python run.py -m experiment=batchnorm` (plain, bn × seeds 0-4) with and
without `hydra/launcher=parallel`: the same jobs, minus Hydra and MLflow, which the GPU machine
lacks. Prints one JSON line with both wall times and their ratio.

    python benchmarks/sweep.py --device cuda --jobs 2 3 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # hw3 need not be installed

from hw3.data import load_fashion_mnist  # noqa: E402
from hw3.train import train  # noqa: E402

GRID = [(model, seed) for model in ("plain", "bn") for seed in range(5)]  # experiment=batchnorm


def job(model: str, seed: int, args: argparse.Namespace) -> float:
    """One sweep job as run.py does it: load the data, train; returns its test accuracy."""
    data = load_fashion_mnist(
        args.data_root,
        normalize=True,
        mean=None,
        std=None,
        train_size=args.train_size,
        test_size=None,
        download=False,
    )
    history = train(
        data,
        model=model,
        lr=0.04,
        momentum=0.0,
        weight_decay=0.0,
        epochs=args.passes,
        batch_size=32,
        seed=seed,
        device=args.device,
        smoothness=True,
        chunk_size=10_000,
        cuda_graphs=True,
    )
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
