"""Seconds per pass: a straightforward DataLoader loop against hw3's engine, in one process.

Both start from the same weights and see the minibatches in the same order, so their metrics
should agree to float rounding. With --rounds, both run again in alternating order and `ratio`
is the median of the rounds' ratios: this machine's speed drifts. Needs torch and torchvision
only (no Hydra, no MLflow).

    python benchmarks/speed.py --device cpu --model plain --passes 1 --train-size 5000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets, transforms

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # hw3 need not be installed

from hw3.engine.data import DataError, FashionMNIST, load_fashion_mnist  # noqa: E402
from hw3.engine.device import DeviceError, ieee_fp32, resolve_device, reuse_cpu_memory, synchronize  # noqa: E402
from hw3.engine.models import INPUT_SHAPE, build_model  # noqa: E402
from hw3.engine.train import (  # noqa: E402
    Diverged,
    Measurement,
    Member,
    Metrics,
    Settings,
    derive_seed,
    train_group,
)

MODELS = ("plain", "bn", "stride")  # the exercises' networks (the other variants take parameters)
LR = 0.04  # conf/optimizer/sgd.yaml (momentum and weight decay 0)
BATCH_SIZE = 32  # conf/trainer/default.yaml
CHUNK_SIZE = 10_000  # conf/trainer/default.yaml
MEASUREMENT = Measurement(1, (1.0,), False, 4096, 20, 1e-3)  # conf/smoothness/default.yaml: L̂
TIMES = ("train_pass_s", "smoothness_s", "eval_s")
T = TypeVar("T")
COMPARED = ("train/loss_running", "train/loss", "train/acc", "smoothness/L", "test/loss")


class SameOrder(Sampler[int]):
    """hw3's shuffling: one `torch.randperm(n, generator)` per pass from the same stream.

    (RandomSampler draws one permutation too many per pass, so its second pass would differ.)
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.n, generator=self.generator).tolist()


def _stream(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, name))


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def reference_sets(root: Path, data: FashionMNIST) -> tuple[Dataset, Dataset]:
    """torchvision's datasets with ToTensor and Normalize applied per image, as usual."""
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((data.mean,), (data.std,))]
    )
    train_set = datasets.FashionMNIST(str(root), train=True, transform=transform)
    test_set = datasets.FashionMNIST(str(root), train=False, transform=transform)
    return Subset(train_set, range(len(data.train))), test_set


def reference_full_pass(
    net: nn.Module, loader: DataLoader, device: torch.device, grads: bool
) -> tuple[float, float, list[torch.Tensor] | None]:
    """Mean loss, accuracy and (with `grads`) ∇ of the mean loss, accumulated in `.grad`."""
    n = len(loader.dataset)
    net.zero_grad()
    total, correct = 0.0, 0
    with torch.set_grad_enabled(grads):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb, reduction="sum")
            if grads:
                (loss / n).backward()
            total += loss.item()
            correct += (logits.argmax(1) == yb).sum().item()
    return total / n, correct / n, [p.grad.clone() for p in net.parameters()] if grads else None


def reference_smoothness(
    net: nn.Module,
    train_set: Dataset,
    full_loader: DataLoader,
    batch_idx: torch.Tensor,
    device: torch.device,
) -> Metrics:
    """L̂ with u = −lr·∇(minibatch loss), the two full gradients in eval mode; state restored."""
    saved = copy.deepcopy(net.state_dict())
    probe = DataLoader(Subset(train_set, batch_idx.tolist()), batch_size=len(batch_idx))
    xb, yb = next(iter(probe))
    net.train()
    net.zero_grad()
    F.cross_entropy(net(xb.to(device)), yb.to(device)).backward()
    u = [-LR * p.grad for p in net.parameters()]
    net.load_state_dict(saved)  # the forward pass moved BatchNorm's running statistics
    net.eval()
    loss, acc, at_w = reference_full_pass(net, full_loader, device, grads=True)
    with torch.no_grad():
        for p, d in zip(net.parameters(), u, strict=True):
            p.add_(d)
    _, _, at_w_plus_u = reference_full_pass(net, full_loader, device, grads=True)
    net.load_state_dict(saved)
    diff = _norm([b - a for a, b in zip(at_w, at_w_plus_u, strict=True)])
    return {"train/loss": loss, "train/acc": acc, "smoothness/L": diff / _norm(u)}


def run_reference(
    root: Path, data: FashionMNIST, args: argparse.Namespace, device: torch.device
) -> list[Metrics]:
    """The straightforward loop: per-image transforms, DataLoaders, `.item()` every step."""
    train_set, test_set = reference_sets(root, data)
    n = len(train_set)
    train_loader = DataLoader(
        train_set, batch_size=BATCH_SIZE, sampler=SameOrder(n, _stream(args.seed, "shuffle"))
    )
    full_loader = DataLoader(train_set, batch_size=args.reference_eval_batch)
    test_loader = DataLoader(test_set, batch_size=args.reference_eval_batch)
    probe = _stream(args.seed, "smoothness")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(args.seed, "init"))
        net = build_model(args.model).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    history = []
    with ieee_fp32():
        for _ in range(args.reference_passes):
            started = time.perf_counter()
            net.train()
            total = 0.0
            for xb, yb in train_loader:
                xb, yb = xb.to(device), yb.to(device)
                optimizer.zero_grad()
                loss = F.cross_entropy(net(xb), yb)
                loss.backward()
                optimizer.step()
                total += loss.item()
            synchronize(device)
            metrics = {"train/loss_running": total / len(train_loader)}
            metrics["time/train_pass_s"] = time.perf_counter() - started

            started = time.perf_counter()
            batch_idx = torch.randperm(n, generator=probe)[:BATCH_SIZE]
            metrics |= reference_smoothness(net, train_set, full_loader, batch_idx, device)
            synchronize(device)
            metrics["time/smoothness_s"] = time.perf_counter() - started

            started = time.perf_counter()
            net.eval()
            metrics["test/loss"], metrics["test/acc"], _ = reference_full_pass(
                net, test_loader, device, grads=False
            )
            synchronize(device)
            metrics["time/eval_s"] = time.perf_counter() - started
            history.append(metrics)
    return history


def load_data(root: str | Path, train_size: int | None) -> FashionMNIST:
    """The official data preprocessed as by default (all test examples)."""
    return load_fashion_mnist(
        root,
        normalize=True,
        mean=None,
        std=None,
        train_size=train_size,
        test_size=None,
        download=False,
    )


def open_inputs(
    prog: str, device: str, root: Path, train_size: int | None
) -> tuple[torch.device, FashionMNIST]:
    """The device and data a benchmark runs on; a one-line error and exit status 2 without."""
    try:
        return resolve_device(device), load_data(root, train_size)
    except (DeviceError, DataError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def timed(device: torch.device, run: Callable[[], T]) -> tuple[float, T]:
    """Seconds `run()` takes (the device's queue drained) and what it returned."""
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


def settings(
    model: str, seed: int, passes: int, chunk_size: int = CHUNK_SIZE, cuda_graphs: bool = True
) -> Settings:
    """One run with the default configuration's settings (conf/ defaults)."""
    return Settings(
        model=model,
        lr=LR,
        momentum=0.0,
        weight_decay=0.0,
        epochs=passes,
        batch_size=BATCH_SIZE,
        seed=seed,
        measure=MEASUREMENT,
        chunk_size=chunk_size,
        cuda_graphs=cuda_graphs,
    )


def run_hw3(
    data: FashionMNIST,
    model: str,
    seed: int,
    passes: int,
    device: str,
    chunk_size: int,
    cuda_graphs: bool = True,
    deterministic: bool = True,
) -> list[Metrics]:
    """hw3's engine with the default configuration's settings."""
    member = Member(settings(model, seed, passes, chunk_size, cuda_graphs))
    (outcome,) = train_group(data, [member], device=device, deterministic=deterministic)
    if isinstance(outcome, Diverged):
        raise outcome
    return outcome


def summary(history: list[Metrics]) -> dict[str, float]:
    """Mean seconds per pass, by phase and in total (smoothness included)."""
    means = {t: sum(m[f"time/{t}"] for m in history) / len(history) for t in TIMES}
    return means | {"pass_s": sum(means.values())}


def max_abs_diff(a: list[Metrics], b: list[Metrics]) -> dict[str, float]:
    """Per metric, the largest |a − b| over the passes both runs made."""
    return {k: max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=False)) for k in COMPARED}


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """This process's peak resident set size in the current window (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured(
    device: torch.device, run: Callable[[], list[Metrics]]
) -> tuple[list[Metrics], dict[str, float]]:
    """Run `run()`; its history and its peak memory (RSS, and CUDA's allocator on cuda)."""
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    history = run()
    peaks = {"rss_peak_mib": round(peak_rss_mib(), 1)}
    if device.type == "cuda":
        peaks["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return history, peaks


def print_table(runs: dict[str, list[Metrics]]) -> None:
    """One row per pass of each implementation, then the means."""
    print(f"{'':12} {'pass':>4} " + " ".join(f"{t:>13}" for t in (*TIMES, "pass_s")))
    for name, history in runs.items():
        for i, m in enumerate(history, start=1):
            times = [m[f"time/{t}"] for t in TIMES]
            print(f"{name:12} {i:4d} " + " ".join(f"{s:13.2f}" for s in (*times, sum(times))))
        mean = summary(history)
        print(f"{name:12} {'mean':>4} " + " ".join(f"{mean[t]:13.2f}" for t in (*TIMES, "pass_s")))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --reference-passes defaults to --passes."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--model", default="plain", choices=MODELS)
    p.add_argument("--passes", type=int, default=1, help="hw3's passes")
    p.add_argument("--reference-passes", type=int, default=None, help="default: --passes")
    p.add_argument(
        "--reference-eval-batch",
        type=int,
        default=BATCH_SIZE,
        help="the reference's DataLoader batch for full passes (default: the training batch)",
    )
    p.add_argument("--train-size", type=int, default=None, help="first N examples; default all")
    p.add_argument("--chunk-size", type=int, default=CHUNK_SIZE, help="hw3's trainer.chunk_size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1, help="runs of both loops, in alternating order")
    p.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = p.parse_args(argv)
    if args.reference_passes is None:
        args.reference_passes = args.passes
    if min(args.passes, args.reference_passes, args.reference_eval_batch, args.rounds) < 1:
        p.error("--passes, --reference-passes, --reference-eval-batch and --rounds must be >= 1")
    return args


def warm_up(device: torch.device, model: str) -> None:
    """Initialise the device's libraries (CUDA context, cuDNN, cuBLAS) outside the timings."""
    net = build_model(model).to(device)
    x = torch.zeros(BATCH_SIZE, *INPUT_SHAPE, device=device)
    y = torch.zeros(BATCH_SIZE, dtype=torch.long, device=device)
    with ieee_fp32():
        F.cross_entropy(net(x), y).backward()
    synchronize(device)


def main(argv: list[str] | None = None) -> int:
    """Time both loops, print the table and, last, one JSON line; 2 if it cannot run."""
    args = parse_args(argv)
    device, data = open_inputs("speed.py", args.device, args.data_root, args.train_size)
    args.device = device.type
    loaded = {"rss_peak_mib": round(peak_rss_mib(), 1)}
    rss_per_run = reset_peak_rss()
    warm_up(device, args.model)
    if device.type == "cpu":
        # hw3 sets this process-wide on its first run; set now, both loops run alike in every
        # round (the reference allocates no block large enough for it to matter).
        reuse_cpu_memory()
    runners = {
        "reference": lambda: run_reference(args.data_root, data, args, device),
        "hw3": lambda: run_hw3(
            data, args.model, args.seed, args.passes, args.device, args.chunk_size
        ),
    }
    runs: dict[str, list[list[Metrics]]] = {name: [] for name in runners}
    peaks: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        # Alternating order, so that a machine that speeds up or slows down favours neither.
        for name in reversed(runners) if r % 2 else runners:
            history, peak = measured(device, runners[name])
            runs[name].append(history)
            # Round 1 only: afterwards RSS starts high, as glibc keeps what hw3 freed.
            peaks.setdefault(name, peak)
    print_table({f"{name} {r + 1}": h for name, hs in runs.items() for r, h in enumerate(hs)})
    means = {name: [summary(h) for h in hs] for name, hs in runs.items()}
    ratios = [
        ref["pass_s"] / ours["pass_s"]
        for ref, ours in zip(means["reference"], means["hw3"], strict=True)
    ]
    ref_s, hw3_s = (summary(list(chain.from_iterable(runs[name]))) for name in runners)
    result = {
        "device": device.type,
        "model": args.model,
        "train_size": len(data.train),
        "passes": args.passes,
        "reference_passes": args.reference_passes,
        "reference_eval_batch": args.reference_eval_batch,
        "chunk_size": args.chunk_size,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "reference": {k: round(v, 3) for k, v in ref_s.items()},
        "hw3": {k: round(v, 3) for k, v in hw3_s.items()},
        "hw3_pass_s": [round(sum(m[f"time/{t}"] for t in TIMES), 3) for m in runs["hw3"][0]],
        "ratio": round(statistics.median(ratios), 2),
        "round_ratios": [round(x, 2) for x in ratios],
        "round_pass_s": {name: [round(m["pass_s"], 4) for m in ms] for name, ms in means.items()},
        "max_abs_diff": {
            k: float(f"{v:.3g}")
            for k, v in max_abs_diff(runs["reference"][0], runs["hw3"][0]).items()
        },
        "memory": {"load": loaded, "reference": peaks["reference"], "hw3": peaks["hw3"]},
        "rss_peak_per_run": rss_per_run,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
