"""The training run: SGD passes, each followed by the smoothness measurement and evaluation."""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from hw3.engine.data import FashionMNIST
from hw3.engine.device import (
    deterministic_kernels,
    ieee_fp32,
    resolve_device,
    reuse_cpu_memory,
    synchronize,
)
from hw3.engine.evaluation import eval_mode, full_pass
from hw3.engine.models import build_model
from hw3.engine.smoothness import effective_smoothness
from hw3.engine.step import TrainStep

Metrics = dict[str, float]
PassCallback = Callable[[int, Metrics], None]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, lr: float) -> None:
        super().__init__(
            f"training diverged: non-finite loss at pass {epoch}, step {step} (lr={lr}); "
            "lower optimizer.lr"
        )
        self.epoch, self.step = epoch, step


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one named random stream of a run."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream))


def _load_checkpoint(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically, so that a kill leaves the previous checkpoint or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(
    data: FashionMNIST,
    *,
    model: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str,
    smoothness: bool,
    chunk_size: int,
    cuda_graphs: bool,
    deterministic: bool,
    on_pass_end: PassCallback | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> list[Metrics]:
    """Train `model` on `data` and return one metrics dict per pass.

    After every pass the metrics go to `on_pass_end(pass, metrics)`. With `checkpoint`, the
    run's state is saved there after every pass, and a run that finds one resumes after its
    last pass, first replaying the finished passes' metrics to `on_pass_end`.
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        reuse_cpu_memory()
    checkpoint = None if checkpoint is None else Path(checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        net = build_model(model).to(dev)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    shuffle, probe = _generator(seed, "shuffle"), _generator(seed, "smoothness")
    history: list[Metrics] = []
    if (state := _load_checkpoint(checkpoint)) is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle_rng"])
        probe.set_state(state["smoothness_rng"])
        history = state["history"]
        for epoch, metrics in enumerate(history, start=1):
            if on_pass_end is not None:
                on_pass_end(epoch, metrics)

    x_train, y_train = data.train.x.to(dev), data.train.y.to(dev)
    x_test, y_test = data.test.x.to(dev), data.test.y.to(dev)
    n = len(y_train)
    step = TrainStep(net, optimizer, x_train, y_train, batch_size, graphs=cuda_graphs)
    net.train()
    with ieee_fp32(), deterministic_kernels(deterministic):
        for epoch in range(len(history) + 1, epochs + 1):
            # The training pass: one shuffled sweep of minibatches.
            order = torch.randperm(n, generator=shuffle).to(dev)
            step.reset()
            started = time.perf_counter()
            for start in tqdm(range(0, n, batch_size), desc=f"pass {epoch}/{epochs}", disable=None):
                step(order[start : start + batch_size])
            synchronize(dev)
            train_pass_s = time.perf_counter() - started
            if (bad := int(step.first_bad)) >= 0:
                raise Diverged(epoch, bad + 1, lr)
            metrics = {"train/loss_running": step.loss_sum.item() / int(step.steps)}

            # The effective smoothness at the pass's final weights; it also yields f(w).
            started = time.perf_counter()
            if smoothness:
                batch_idx = torch.randperm(n, generator=probe)[:batch_size]
                s = effective_smoothness(net, x_train, y_train, batch_idx, lr, chunk_size)
                metrics |= {
                    "train/loss": s.loss,
                    "train/acc": s.accuracy,
                    "smoothness/L": s.L,
                    "smoothness/lr_max": 1 / s.L if s.L > 0 else math.inf,
                    "smoothness/u_norm": s.u_norm,
                    "smoothness/grad_norm": s.grad_norm,
                }  # its results are host floats: the GPU is done by now
            smoothness_s = time.perf_counter() - started

            # Evaluation in eval mode: the test split, and the training split if not yet done.
            started = time.perf_counter()
            with eval_mode(net):
                if not smoothness:
                    fit = full_pass(net, x_train, y_train, chunk_size)
                    metrics |= {"train/loss": fit.loss, "train/acc": fit.accuracy}
                test = full_pass(net, x_test, y_test, chunk_size)
            metrics |= {"test/loss": test.loss, "test/acc": test.accuracy}
            metrics |= {
                "time/train_pass_s": train_pass_s,
                "time/smoothness_s": smoothness_s,
                "time/eval_s": time.perf_counter() - started,
            }

            history.append(metrics)
            if checkpoint is not None:
                _save_checkpoint(
                    checkpoint,
                    {
                        "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "shuffle_rng": shuffle.get_state(),
                        "smoothness_rng": probe.get_state(),
                        "history": history,
                    },
                )
            if on_pass_end is not None:
                on_pass_end(epoch, metrics)
    return history
