"""GPU numerics: L̂ in float32 on the device against float64 on the CPU, and determinism.

With trainer.deterministic (deterministic kernels), a rerun and the CUDA-graph step against the
eager one must give the same bits; without, their differences and the seconds per pass of both
modes are reported (what determinism costs). Prints one JSON line per check and exits 1 if any
fails. Needs torch and torchvision only.

    python benchmarks/gpu_numerics.py --data-root .data     (--device cpu tries it without a GPU)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # hw3 need not be installed

from speed import BATCH_SIZE, CHUNK_SIZE, LR, MODELS, load_data, run_hw3  # noqa: E402  (benchmarks/ is on sys.path)

from hw3.engine.data import FashionMNIST, Split  # noqa: E402
from hw3.engine.device import DeviceError, resolve_device  # noqa: E402
from hw3.engine.models import build_model  # noqa: E402
from hw3.engine.smoothness import effective_smoothness  # noqa: E402
from hw3.engine.train import Metrics, derive_seed  # noqa: E402

SMOOTHNESS_SIZE = 4000  # examples in the float64 comparison
SMOOTHNESS_RTOL = 1e-3  # allowed relative error of float32 L̂ against float64
DETERMINISM_SIZE = 10_000  # not a multiple of 32: the last batch of a pass is partial (eager)
DETERMINISM_PASSES = 3  # seconds per pass from passes 2.. (pass 1 captures the CUDA graph)


def trained_net(name: str, split: Split, device: torch.device, seed: int) -> nn.Module:
    """`name` initialised as hw3 does, then one pass of plain SGD over `split` on `device`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        net = build_model(name).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    x, y = split.x.to(device), split.y.to(device)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for idx in order.to(device).split(BATCH_SIZE):
        optimizer.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        optimizer.step()
    return net


def relative_error(value: float, exact: float) -> float:
    """|value − exact| / |exact| (absolute error when `exact` is 0)."""
    return abs(value - exact) / (abs(exact) or 1.0)


def smoothness_check(name: str, data: FashionMNIST, device: torch.device, seed: int) -> dict:
    """L̂, ‖u‖ and ‖∇f‖ in float32 on `device` against float64 on the CPU, after one pass."""
    split = Split(data.train.x[:SMOOTHNESS_SIZE], data.train.y[:SMOOTHNESS_SIZE])
    net = trained_net(name, split, device, seed)
    batch_idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 1))
    batch_idx = batch_idx[:BATCH_SIZE]
    fp32 = effective_smoothness(
        net, split.x.to(device), split.y.to(device), batch_idx, LR, len(split)
    )
    exact = copy.deepcopy(net).to("cpu", torch.float64)
    fp64 = effective_smoothness(exact, split.x.double(), split.y, batch_idx, LR, len(split))
    errors = {
        "L": relative_error(fp32.L, fp64.L),
        "u_norm": relative_error(fp32.u_norm, fp64.u_norm),
        "grad_norm": relative_error(fp32.grad_norm, fp64.grad_norm),
    }
    return {
        "check": "smoothness_fp64",
        "model": name,
        "examples": len(split),
        "L_fp32": fp32.L,
        "L_fp64": fp64.L,
        "rel_err": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "ok": errors["L"] <= SMOOTHNESS_RTOL,
    }


def _run(
    name: str,
    data: FashionMNIST,
    device: torch.device,
    seed: int,
    graphs: bool,
    deterministic: bool,
) -> tuple[list[Metrics], float]:
    """The untimed metrics of a run, and its mean seconds per pass after the first."""
    history = run_hw3(
        data, name, seed, DETERMINISM_PASSES, device.type, CHUNK_SIZE, graphs, deterministic
    )
    seconds = [sum(v for k, v in m.items() if k.startswith("time/")) for m in history[1:]]
    untimed = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in history]
    return untimed, sum(seconds) / len(seconds)


def max_relative_difference(a: list[Metrics], b: list[Metrics]) -> float:
    """The largest relative difference of any metric in any pass."""
    return max(relative_error(y[k], x[k]) for x, y in zip(a, b, strict=True) for k in x)


def determinism_check(name: str, data: FashionMNIST, device: torch.device, seed: int) -> dict:
    """Deterministic kernels: rerun and graphs-vs-eager bit for bit; and what they cost."""
    first, det_s = _run(name, data, device, seed, graphs=True, deterministic=True)
    again, _ = _run(name, data, device, seed, graphs=True, deterministic=True)
    eager, _ = _run(name, data, device, seed, graphs=False, deterministic=True)
    free, free_s = _run(name, data, device, seed, graphs=True, deterministic=False)
    free_again, _ = _run(name, data, device, seed, graphs=True, deterministic=False)
    free_eager, _ = _run(name, data, device, seed, graphs=False, deterministic=False)
    return {
        "check": "determinism",
        "model": name,
        "examples": len(data.train),
        "passes": DETERMINISM_PASSES,
        "deterministic": {
            "bitwise_rerun": first == again,
            "bitwise_graphs_vs_eager": first == eager,
            "pass_s": round(det_s, 4),
        },
        "nondeterministic": {
            "max_rel_diff_rerun": float(f"{max_relative_difference(free, free_again):.3g}"),
            "max_rel_diff_graphs_vs_eager": float(
                f"{max_relative_difference(free, free_eager):.3g}"
            ),
            "pass_s": round(free_s, 4),
        },
        "cost_of_determinism": round(det_s / free_s, 3),
        "ok": first == again == eager,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("auto", "cpu", "cuda"))
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both checks for each model; 0 if all pass."""
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except DeviceError as err:
        print(f"gpu_numerics.py: {err}", file=sys.stderr)
        return 2
    data = load_data(args.data_root, DETERMINISM_SIZE)
    ok = True
    for name in args.models.split(","):
        for check in (smoothness_check, determinism_check):
            result = {"device": device.type} | check(name, data, device, args.seed)
            print(json.dumps(result), flush=True)
            ok &= result["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
