"""hw3's MaxPool2d against nn.MaxPool2d inside the network: seconds and bitwise equality.

Full-gradient passes (eval mode, as for L̂) and training steps (batch 32) on the same data and
weights, the two variants back to back in each round, in alternating order, because this
machine's speed drifts from minute to minute. Prints one JSON line with the median seconds,
`ratio` (the median over rounds of nn.MaxPool2d's seconds ÷ hw3's) and whether the two
computed the same bits.

    python benchmarks/pooling.py --model plain --train-size 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from operator import truediv
from pathlib import Path

import torch
from speed import BATCH_SIZE, CHUNK_SIZE, LR, MODELS, PROJECT_ROOT, load_data

from hw3.engine.device import reuse_cpu_memory
from hw3.engine.evaluation import full_pass
from hw3.engine.models import build_model
from hw3.engine.pooling import with_torch_pooling
from hw3.engine.step import TrainStep


def main() -> None:
    """Time both variants in alternating rounds; print the table's JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="plain", choices=[m for m in MODELS if m != "stride"])
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=100, help="training steps per round")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = p.parse_args()
    if min(args.train_size, args.steps, args.rounds) < 1:
        p.error("--train-size, --steps and --rounds must be >= 1")
    reuse_cpu_memory()  # as hw3.engine.train does on CPU
    data = load_data(args.data_root, args.train_size)
    x, y = data.train.x, data.train.y
    torch.manual_seed(0)
    nets = {"hw3": build_model(args.model)}
    nets["torch"] = with_torch_pooling(nets["hw3"])
    steps = {
        k: TrainStep(net, torch.optim.SGD(net.parameters(), lr=LR), x, y, BATCH_SIZE, False, None)
        for k, net in nets.items()
    }
    order = torch.randperm(len(y))[: args.steps * BATCH_SIZE]
    seconds = {f"{k}_{what}": [] for k in nets for what in ("full_pass_s", "step_ms")}
    grads = {}
    for r in range(args.rounds):
        for k in sorted(nets, reverse=r % 2 == 1):
            net = nets[k]
            net.eval()
            started = time.perf_counter()
            grads[k] = full_pass(net, x, y, CHUNK_SIZE, list(net.parameters())).grads
            seconds[f"{k}_full_pass_s"].append(time.perf_counter() - started)
            net.train()
            started = time.perf_counter()
            for start in range(0, len(order), BATCH_SIZE):
                steps[k](order[start : start + BATCH_SIZE])
            seconds[f"{k}_step_ms"].append((time.perf_counter() - started) / args.steps * 1e3)
    medians = {k: round(statistics.median(v), 3) for k, v in seconds.items()}
    weights = [list(net.state_dict().values()) for net in nets.values()]
    identical = all(
        torch.equal(a, b)
        for a, b in zip(grads["hw3"] + weights[0], grads["torch"] + weights[1], strict=True)
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "train_size": len(y),
                "threads": torch.get_num_threads(),
                "median": medians,
                "ratio": {
                    what: round(
                        statistics.median(
                            map(truediv, seconds[f"torch_{what}"], seconds[f"hw3_{what}"])
                        ),
                        2,
                    )
                    for what in ("full_pass_s", "step_ms")
                },
                "bit_identical": identical,
            }
        )
    )


if __name__ == "__main__":
    main()
