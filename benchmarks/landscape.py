"""Seconds per landscape measurement: L̂ over K directions, the step-size profile, sharpness.

On the real data and one device, it times `hw3.engine.smoothness.measure` for K = 1, 4, 16
directions with scales [1] and K = 1, 4 with five scales, and
`hw3.engine.sharpness.top_hessian_eigenvalue`, next to one full-gradient pass: the unit a
measurement is made of (1 + K·points passes; a sharpness iteration is one Hessian-vector product
over its examples). One JSON line per configuration, then a summary line; progress on stderr.
With --rounds N, all of it runs N times, in alternating order, and seconds are medians. The
weights are the initial ones (the cost does not depend on them). Needs torch and torchvision.

    python benchmarks/landscape.py --device cpu --train-size 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from speed import BATCH_SIZE, CHUNK_SIZE, LR, MODELS, PROJECT_ROOT, open_inputs, timed, warm_up

from hw3.engine.device import reuse_cpu_memory
from hw3.engine.evaluation import eval_mode, full_pass
from hw3.engine.models import build_model
from hw3.engine.sharpness import top_hessian_eigenvalue
from hw3.engine.smoothness import measure
from hw3.engine.train import derive_seed

PROFILE = (0.25, 0.5, 1.0, 2.0, 4.0)  # the step-size profile's multipliers c
MEASUREMENTS = ((1, (1.0,)), (4, (1.0,)), (16, (1.0,)), (1, PROFILE), (4, PROFILE))  # (K, scales)


def probe_batches(n: int, k: int, seed: int) -> list[torch.Tensor]:
    """`k` probe minibatches, each the head of one permutation, as the training loop draws them."""
    probe = torch.Generator().manual_seed(derive_seed(seed, "smoothness"))
    return [torch.randperm(n, generator=probe)[:BATCH_SIZE] for _ in range(k)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="plain", choices=MODELS)
    p.add_argument("--train-size", type=int, default=None, help="first N examples; default all")
    p.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="hw3's trainer.chunk_size")
    p.add_argument("--sharpness-examples", type=int, default=4000, help="examples in f_S")
    p.add_argument("--sharpness-iters", type=int, default=20, help="Lanczos iterations")
    p.add_argument(
        "--sharpness-tol", type=float, default=0.0, help="relative tolerance (0: all iterations)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1, help="runs of everything, alternating order")
    p.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = p.parse_args(argv)
    counts = (args.chunk_size, args.sharpness_examples, args.sharpness_iters, args.rounds)
    if min(counts) < 1 or (args.train_size is not None and args.train_size < 1):
        p.error(
            "--train-size, --chunk-size, --sharpness-examples, --sharpness-iters and --rounds "
            "must be >= 1"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Time every configuration; one JSON line each, then the summary; 2 if it cannot run."""
    args = parse_args(argv)
    device, data = open_inputs("landscape.py", args.device, args.data_root, args.train_size)
    if device.type == "cpu":
        reuse_cpu_memory()  # as hw3.engine.train does on CPU
    warm_up(device, args.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(args.seed, "init"))
        net = build_model(args.model).to(device)
    x, y = data.train.x.to(device), data.train.y.to(device)
    batches = probe_batches(len(y), max(k for k, _ in MEASUREMENTS), args.seed)
    params = list(net.parameters())

    def full_gradient() -> float:
        with eval_mode(net):
            return full_pass(net, x, y, args.chunk_size, params).loss

    def sharpness() -> tuple[float, int]:
        generator = torch.Generator().manual_seed(derive_seed(args.seed, "sharpness"))
        return top_hessian_eigenvalue(
            net,
            x,
            y,
            args.sharpness_examples,
            args.chunk_size,
            args.sharpness_iters,
            args.sharpness_tol,
            generator,
        )

    runs: dict[str, Callable[[], object]] = {"full_gradient": full_gradient}
    for k, scales in MEASUREMENTS:
        runs[f"K{k}_scales{len(scales)}"] = lambda k=k, scales=scales: measure(
            net, x, y, batches[:k], LR, scales, args.chunk_size
        )
    runs["sharpness"] = sharpness
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    results: dict[str, object] = {}
    for r in range(args.rounds):
        for name in reversed(runs) if r % 2 else runs:
            s, results[name] = timed(device, runs[name])
            seconds[name].append(s)
            print(f"round {r + 1}/{args.rounds} {name}: {s:.2f} s", file=sys.stderr, flush=True)

    median = {name: statistics.median(s) for name, s in seconds.items()}
    unit = median["full_gradient"]
    common = {"device": device.type, "model": args.model, "train_size": len(y)}
    print(json.dumps(common | {"config": "full_gradient", "seconds": round(unit, 3)}))
    first_direction = {}
    for k, scales in MEASUREMENTS:
        name = f"K{k}_scales{len(scales)}"
        got = results[name]
        passes = 1 + k * len({1.0, *scales})
        line = {
            "config": name,
            "directions": k,
            "scales": list(scales),
            "seconds": round(median[name], 3),
            "full_gradient_passes": passes,
            "seconds_per_pass": round(median[name] / passes, 3),
            "in_full_passes": round(median[name] / unit, 2),
            "L": got.L,
            "beta": got.metrics()["smoothness/beta"],
        }
        first_direction.setdefault(scales, got.directions[0])
        line["direction_1_as_K1"] = got.directions[0] == first_direction[scales]
        print(json.dumps(common | line))
    value, used = results["sharpness"]
    print(
        json.dumps(
            common
            | {
                "config": "sharpness",
                "examples": min(args.sharpness_examples, len(y)),
                "iters": used,
                "seconds": round(median["sharpness"], 3),
                "seconds_per_iter": round(median["sharpness"] / used, 3),
                "in_full_passes": round(median["sharpness"] / unit, 2),
                "value": value,
            }
        )
    )
    summary = {
        "summary": True,
        "chunk_size": args.chunk_size,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": {name: round(s, 3) for name, s in median.items()},
        "in_full_passes": {name: round(s / unit, 2) for name, s in median.items()},
    }
    print(json.dumps(common | summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
