"""Wall time of a sweep's runs trained in series vs together (train_group), in one process.

Stands in for `python run.py -m experiment=batchnorm` without and with `hydra/launcher=batched`
(plain, bn × seeds 0-4; --models, --seeds): each run alone through `train`, then the runs
grouped as the launcher groups them (one group per model), then all in one group (the engine
allows it; the launcher's key keeps architectures apart); in alternating order over --rounds.
Then the step micro-benchmark that chose how a group trains: N copies of `plain` stepped one
after another, interleaved on their own CUDA streams (each its own CUDA graph: what the engine
does), and as one torch.func step (stack_module_state + vmap(grad)), eager and captured.
Prints one JSON line per figure. Needs torch and torchvision only (no Hydra, no MLflow).

    python benchmarks/group.py --device cuda                    # every figure, full data
    python benchmarks/group.py --device cpu --train-size 2000 --passes 2 --steps 100
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # hw3 need not be installed

from speed import BATCH_SIZE, CHUNK_SIZE, LR, MODELS, open_inputs, run_hw3, settings, timed, warm_up  # noqa: E402  (benchmarks/ is on sys.path)

from hw3.engine.data import FashionMNIST  # noqa: E402
from hw3.engine.device import (  # noqa: E402
    deterministic_kernels,
    ieee_fp32,
)
from hw3.engine.models import build_model  # noqa: E402
from hw3.engine.pooling import with_torch_pooling  # noqa: E402
from hw3.engine.step import TrainStep, own_streams  # noqa: E402
from hw3.engine.train import Member, Metrics, Settings, derive_seed, train_group  # noqa: E402

TIMES = ("time/train_pass_s", "time/smoothness_s", "time/eval_s")
WARMUP_STEPS = 5  # untimed steps first: the CUDA graph step captures after 3 eager ones


def grouped(data: FashionMNIST, runs: list[Settings], device: str, key) -> list[list[Metrics]]:
    """The runs trained by `train_group`, one group per distinct `key(run)`, in the runs' order."""
    histories: dict[int, list[Metrics]] = {}
    for k in dict.fromkeys(key(s) for s in runs):
        members = [i for i, s in enumerate(runs) if key(s) == k]
        outcomes = train_group(
            data, [Member(runs[i]) for i in members], device=device, deterministic=True
        )
        for i, history in zip(members, outcomes, strict=True):
            assert isinstance(history, list), history  # a diverged run: not this benchmark's
            histories[i] = history
    return [histories[i] for i in range(len(runs))]


def max_abs_diff(a: list[list[Metrics]], b: list[list[Metrics]]) -> dict[str, float]:
    """Per untimed metric, the largest |a − b| over every run and pass."""
    keys = [k for k in a[0][0] if not k.startswith("time/")]
    pairs = [(x, y) for ha, hb in zip(a, b, strict=True) for x, y in zip(ha, hb, strict=True)]
    return {k: max(abs(x[k] - y[k]) for x, y in pairs) for k in keys}


def phases(histories: list[list[Metrics]]) -> dict[str, float]:
    """Seconds by phase, summed over runs and passes (a group's train time is shared out)."""
    return {t.removeprefix("time/"): sum(m[t] for h in histories for m in h) for t in TIMES}


def sweep_figure(data: FashionMNIST, args: argparse.Namespace, device: torch.device) -> dict:
    """Series vs the launcher's groups vs one group, `args.rounds` times in alternating order."""
    runs = [settings(m, s, args.passes) for m in args.models for s in args.seeds]
    variants = {
        "series": lambda: [
            run_hw3(data, s.model, s.seed, s.epochs, device.type, CHUNK_SIZE) for s in runs
        ],
        "group": lambda: grouped(data, runs, device.type, key=lambda s: s.model),
        "one_group": lambda: grouped(data, runs, device.type, key=lambda s: None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, list[list[Metrics]]] = {}
    for r in range(args.rounds):
        for name in reversed(variants) if r % 2 else variants:
            s, histories = timed(device, variants[name])
            seconds[name].append(s)
            results.setdefault(name, histories)
            print(f"round {r + 1} {name}: {s:.1f} s", file=sys.stderr)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    diffs = {
        name: max_abs_diff(results["series"], results[name]) for name in ("group", "one_group")
    }
    by_phase = {name: {k: round(v, 2) for k, v in phases(h).items()} for name, h in results.items()}
    diffs_shown = {name: {k: float(f"{v:.3g}") for k, v in d.items()} for name, d in diffs.items()}
    return {
        "check": "group",
        "device": device.type,
        "runs": len(runs),
        "models": args.models,
        "passes": args.passes,
        "train_size": len(data.train),
        "rounds": args.rounds,
        "series_s": round(median["series"], 2),
        "group_s": round(median["group"], 2),
        "one_group_s": round(median["one_group"], 2),
        "ratio": round(median["series"] / median["group"], 2),
        "one_group_ratio": round(median["series"] / median["one_group"], 2),
        "round_s": {name: [round(x, 2) for x in s] for name, s in seconds.items()},
        "phases_s": by_phase,
        "max_abs_diff": diffs_shown,
        "bit_identical": all(v == 0 for d in diffs.values() for v in d.values()),
    }


# --- the step micro-benchmark ------------------------------------------------------------------


def nets(n: int, device: torch.device) -> list[nn.Module]:
    """N copies of `plain` initialised as runs with seeds 0..N-1 are."""
    out = []
    for seed in range(n):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init"))
            out.append(build_model("plain").to(device))
    return out


class Interleaved:
    """N engine steps (TrainStep, a CUDA graph each on cuda), each on its own CUDA stream as
    train_group interleaves them or, given one stream, one after another on it (the streams
    wait for the work queued so far once, as at the start of a pass)."""

    def __init__(self, models: list[nn.Module], x, y, streams: list) -> None:
        self.streams = streams if len(streams) == len(models) else streams[:1] * len(models)
        self.steps = [
            TrainStep(m, torch.optim.SGD(m.parameters(), lr=LR), x, y, BATCH_SIZE, True, stream)
            for m, stream in zip(models, self.streams, strict=True)
        ]
        for stream in set(self.streams) - {None}:
            stream.wait_stream(torch.cuda.current_stream(x.device))

    def __call__(self, idx: torch.Tensor) -> None:
        """One SGD step of every net; idx (N, B): each net's own minibatch."""
        for step, stream, i in zip(self.steps, self.streams, idx, strict=True):
            with nullcontext() if stream is None else torch.cuda.stream(stream):
                step(i)

    def weights(self) -> list[list[torch.Tensor]]:
        """Each net's parameters."""
        return [list(s.model.parameters()) for s in self.steps]


class Vmapped:
    """The N nets as stacked parameters, stepped by one vmap(grad) over per-net minibatches and
    one in-place SGD update; with `graph` (cuda), the step replayed from a CUDA graph."""

    def __init__(self, models: list[nn.Module], x, y, graph: bool) -> None:
        models = [with_torch_pooling(m) for m in models]  # hw3's CPU pooling has no vmap rule
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = buffers
        base = copy.deepcopy(models[0]).to("meta")

        def loss(p: dict, b: dict, idx: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(base, (p, b), (x[idx],)), y[idx])

        self._grads = vmap(grad_and_value(loss))
        self.loss_sum = torch.zeros(len(models), device=x.device)
        self._idx = torch.zeros(len(models), BATCH_SIZE, dtype=torch.long, device=x.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager = 0
        self.graph = graph

    def _step(self, idx: torch.Tensor) -> None:
        grads, loss = self._grads(self.params, self.buffers, idx)
        torch._foreach_add_(list(self.params.values()), list(grads.values()), alpha=-LR)
        self.loss_sum.add_(loss)

    def __call__(self, idx: torch.Tensor) -> None:
        """One SGD step of every net; idx (N, B)."""
        if not self.graph:
            self._step(idx)
            return
        self._idx.copy_(idx)
        if self._graph is not None:
            self._graph.replay()
        elif self._eager < 3:  # eager steps on a side stream before capture, as TrainStep does
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step(self._idx)
            torch.cuda.current_stream().wait_stream(stream)
            self._eager += 1
        else:
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._step(self._idx)
            self._graph.replay()

    def weights(self) -> list[list[torch.Tensor]]:
        """Each net's parameters, unstacked."""
        return [[v[i] for v in self.params.values()] for i in range(len(self.loss_sum))]


def _step_rates(
    options: dict[str, Callable[[], Interleaved | Vmapped]],
    indices: torch.Tensor,
    n: int,
    steps: int,
    device: torch.device,
) -> tuple[dict[str, float | str], dict[str, list[list[torch.Tensor]]]]:
    """Each option's member steps per second, and the weights it ends with."""
    rates: dict[str, float | str] = {}
    weights = {}
    for name, build in options.items():
        try:
            stepper = build()
            for i in range(WARMUP_STEPS):
                stepper(indices[i])
            seconds, _ = timed(device, lambda: [stepper(i) for i in indices[WARMUP_STEPS:]])  # noqa: B023
        except RuntimeError as err:  # one option failing on a device must not cost the others
            rates[name] = f"failed: {str(err).splitlines()[0]}"
            continue
        rates[name] = round(n * steps / seconds, 1)
        weights[name] = [[p.detach().clone() for p in ps] for ps in stepper.weights()]
    return rates, weights


def step_figure(data: FashionMNIST, n: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Member steps per second of each option for N nets, and how far each one's weights end up
    from stepping the nets one after another (0: the same bits)."""
    x, y = data.train.x.to(device), data.train.y.to(device)
    g = torch.Generator().manual_seed(0)
    total = WARMUP_STEPS + args.steps
    indices = torch.randint(len(y), (total, n, BATCH_SIZE), generator=g).to(device)
    with own_streams(n, device) as streams:
        options: dict[str, Callable[[], Interleaved | Vmapped]] = {
            "sequential": lambda: Interleaved(nets(n, device), x, y, streams[:1]),
            "vmap": lambda: Vmapped(nets(n, device), x, y, graph=False),
        }
        if device.type == "cuda":
            options["streams"] = lambda: Interleaved(nets(n, device), x, y, streams)
            options["vmap_graph"] = lambda: Vmapped(nets(n, device), x, y, graph=True)
        rates, weights = _step_rates(options, indices, n, args.steps, device)
    diff = {
        name: max(
            float((a - b).abs().max())
            for wa, wb in zip(ws, weights["sequential"], strict=True)
            for a, b in zip(wa, wb, strict=True)
        )
        for name, ws in weights.items()
        if name != "sequential"
    }
    return {
        "check": "group_step",
        "device": device.type,
        "model": "plain",
        "members": n,
        "steps": args.steps,
        "member_steps_per_s": rates,
        "max_weight_diff_vs_sequential": {k: float(f"{v:.3g}") for k, v in diff.items()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--models", nargs="+", default=["plain", "bn"], choices=MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(5)))
    p.add_argument("--passes", type=int, default=10, help="passes per run")
    p.add_argument("--train-size", type=int, default=None, help="first N examples; default all")
    p.add_argument("--rounds", type=int, default=1, help="runs of every variant, alternating")
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 10], help="step benchmark N")
    p.add_argument("--steps", type=int, default=500, help="timed steps of the step benchmark")
    p.add_argument("--data-root", type=Path, default=PROJECT_ROOT / "data")
    args = p.parse_args(argv)
    if min(args.passes, args.rounds, args.steps, *args.members) < 1:
        p.error("--passes, --rounds, --steps and --members must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Print the sweep figure, then one step figure per N; 2 if it cannot run."""
    args = parse_args(argv)
    device, data = open_inputs("group.py", args.device, args.data_root, args.train_size)
    for model in args.models:
        warm_up(device, model)
    print(json.dumps(sweep_figure(data, args, device)), flush=True)
    with ieee_fp32(), deterministic_kernels(True):
        for n in args.members:
            print(json.dumps(step_figure(data, n, args, device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
