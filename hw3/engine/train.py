"""Training runs: SGD passes, each followed by the landscape measurement and evaluation.

`train` trains one run. `train_group` trains several runs of one dataset in one process: each
member keeps its own network, optimizer, random streams and checkpoint, so its numbers are
exactly those it gets alone. On CUDA the members' SGD steps are interleaved, each member on its
own stream (and its own CUDA graph), so that the GPU runs them side by side.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from hw3.engine.models import build_model, draw_noise_from, noise_drawn_from
from hw3.engine.sharpness import top_hessian_eigenvalue
from hw3.engine.smoothness import measure
from hw3.engine.step import TrainStep, own_streams

Metrics = dict[str, float]
PassCallback = Callable[[int, Metrics], None]
# A run's independent random streams, each seeded from the run's seed and its name: direction 1
# of the landscape probe draws from "smoothness" alone, so it is the same for any K; a noisy
# network's training draws its noise from "noise", its measurement from "smoothness-noise".
STREAMS = ("shuffle", "smoothness", "smoothness-extra", "sharpness", "noise", "smoothness-noise")


class Diverged(RuntimeError):
    """The training loss, or the weights a step left, became NaN or infinite."""

    def __init__(self, epoch: int, step: int, lr: float, what: str = "loss") -> None:
        super().__init__(
            f"training diverged: non-finite {what} at pass {epoch}, step {step} (lr={lr}); "
            "lower optimizer.lr"
        )
        self.epoch, self.step = epoch, step


@dataclass(frozen=True)
class Measurement:
    """What is measured after every pass (conf/smoothness)."""

    directions: int  # probe minibatches K; L̂ is their mean
    scales: tuple[float, ...]  # step multipliers c of the profile along each direction
    sharpness: bool  # also λ_max of the Hessian
    sharpness_examples: int | None  # the first N training examples for it (None: all)
    sharpness_iters: int
    sharpness_tol: float


@dataclass(frozen=True)
class Settings:
    """One run: what it trains and measures, and how it computes (but the device)."""

    model: str
    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    batch_size: int
    seed: int
    measure: Measurement | None  # None: no landscape measurement, f(w) by an evaluation pass
    chunk_size: int  # examples per chunk of a full pass
    cuda_graphs: bool
    model_params: dict[str, Any] = field(default_factory=dict)  # the variant's (conf/model)


@dataclass(frozen=True)
class Member:
    """A run of a group: its settings, where its passes go, and its checkpoint file."""

    settings: Settings
    on_pass_end: PassCallback | None = None
    checkpoint: Path | None = None


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one named random stream of a run."""
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read back (truncated, corrupt, not hw3's)."""


CHECKPOINT_KEYS = ("model", "optimizer", "rng", "history")


def read_checkpoint(path: Path) -> dict:
    """The state saved at `path` after a run's last pass; CheckpointError if it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds: RuntimeError, EOFError, UnpicklingError
        why = f"truncated or corrupt: {type(err).__name__}"
        raise CheckpointError(f"checkpoint {path} is unreadable ({why})") from err
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        raise CheckpointError(f"checkpoint {path} is unreadable (not a checkpoint of hw3's)")
    return state


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically, so that a kill leaves the previous checkpoint or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


Split = tuple[torch.Tensor, torch.Tensor]  # images and labels, on the training device


class Run:
    """One run's state on the device: network, optimizer, SGD step, random streams, history.

    A run with a checkpoint file resumes after the last pass saved there.
    """

    def __init__(
        self,
        member: Member,
        train_split: Split,
        test_split: Split,
        stream: torch.cuda.Stream | None,
    ) -> None:
        s = self.settings = member.settings
        self.member, (self.x, self.y), self.test_split = member, train_split, test_split
        self.stream = stream  # the run's own CUDA stream (None on CPU)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(s.seed, "init"))
            self.net = build_model(s.model, **s.model_params).to(self.x.device)
        self.optimizer = torch.optim.SGD(
            self.net.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
        )
        self.streams = {n: torch.Generator().manual_seed(derive_seed(s.seed, n)) for n in STREAMS}
        draw_noise_from(self.net, self.streams["noise"])
        self.history: list[Metrics] = []
        path = member.checkpoint
        if path is not None and path.is_file():
            state = read_checkpoint(path)
            self.net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            for name, generator in self.streams.items():
                generator.set_state(state["rng"][name])
            self.history = state["history"]
        self.step = TrainStep(
            self.net, self.optimizer, self.x, self.y, s.batch_size, s.cuda_graphs, stream
        )
        self.net.train()

    @property
    def done(self) -> bool:
        """Whether all its passes are trained."""
        return len(self.history) >= self.settings.epochs

    @property
    def steps_per_pass(self) -> int:
        """SGD steps in one pass (the last one may be a partial batch)."""
        return math.ceil(len(self.y) / self.settings.batch_size)

    def on_stream(self) -> torch.cuda.StreamContext | nullcontext:
        """The run's own CUDA stream for the block (nothing on CPU)."""
        return nullcontext() if self.stream is None else torch.cuda.stream(self.stream)

    def replay(self) -> None:
        """Hand the passes a checkpoint brought back to `on_pass_end` again."""
        if self.member.on_pass_end is not None:
            for epoch, metrics in enumerate(self.history, start=1):
                self.member.on_pass_end(epoch, metrics)

    def steps(self) -> Iterator[None]:
        """The pass's SGD steps in a fresh shuffled order, one per iteration."""
        n, batch_size = len(self.y), self.settings.batch_size
        order = torch.randperm(n, generator=self.streams["shuffle"]).to(self.x.device)
        self.step.reset()
        for start in range(0, n, batch_size):
            self.step(order[start : start + batch_size])
            yield

    def finish_pass(self, train_pass_s: float) -> None:
        """Check the pass for divergence, then measure, evaluate, save and report it."""
        epoch = len(self.history) + 1
        if (bad := int(self.step.first_bad)) >= 0:
            raise Diverged(epoch, bad + 1, self.settings.lr)
        state = [t for t in self.net.state_dict().values() if t.is_floating_point()]
        if not bool(torch.stack([t.isfinite().all() for t in state]).all()):
            # the pass's last step: its loss was finite, the update it made was not
            raise Diverged(epoch, int(self.step.steps), self.settings.lr, "weights")
        metrics = {"train/loss_running": self.step.loss_sum.item() / int(self.step.steps)}

        # The landscape at the pass's final weights; it also yields f(w).
        started = time.perf_counter()
        if self.settings.measure is not None:
            metrics |= self._measure(self.settings.measure)
        smoothness_s = time.perf_counter() - started

        # Evaluation in eval mode: the test split, and the training split if not yet done.
        started = time.perf_counter()
        chunk_size = self.settings.chunk_size
        with eval_mode(self.net):
            if self.settings.measure is None:
                fit = full_pass(self.net, self.x, self.y, chunk_size)
                metrics |= {"train/loss": fit.loss, "train/acc": fit.accuracy}
            test = full_pass(self.net, *self.test_split, chunk_size)
        metrics |= {"test/loss": test.loss, "test/acc": test.accuracy}
        metrics |= {
            "time/train_pass_s": train_pass_s,
            "time/smoothness_s": smoothness_s,
            "time/eval_s": time.perf_counter() - started,
        }

        self.history.append(metrics)
        if self.member.checkpoint is not None:
            _save_checkpoint(
                self.member.checkpoint,
                {
                    "model": self.net.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "rng": {name: g.get_state() for name, g in self.streams.items()},
                    "history": self.history,
                },
            )
        if self.member.on_pass_end is not None:
            self.member.on_pass_end(epoch, metrics)

    def _measure(self, m: Measurement) -> Metrics:
        """L̂ over K directions with its profile, and λ_max if asked for (host floats)."""
        n, batch_size = len(self.y), self.settings.batch_size
        extra = [self.streams["smoothness-extra"]] * (m.directions - 1)
        batches = [
            torch.randperm(n, generator=g)[:batch_size]
            for g in [self.streams["smoothness"], *extra]
        ]
        lr, chunk_size = self.settings.lr, self.settings.chunk_size
        with noise_drawn_from(self.net, self.streams["smoothness-noise"]):
            found = measure(self.net, self.x, self.y, batches, lr, m.scales, chunk_size)
        metrics = found.metrics()
        if m.sharpness:
            metrics["smoothness/sharpness"], _ = top_hessian_eigenvalue(
                self.net,
                self.x,
                self.y,
                m.sharpness_examples,
                chunk_size,
                m.sharpness_iters,
                m.sharpness_tol,
                self.streams["sharpness"],
            )
        return metrics


def _finish(runs: Sequence[Run], train_pass_s: float) -> dict[Run, Diverged]:
    """Finish each run's pass; the runs that diverged in it, with why."""
    diverged = {}
    for run in runs:
        try:
            run.finish_pass(train_pass_s)
        except Diverged as err:
            diverged[run] = err
    return diverged


@contextmanager
def _on_own_streams(runs: Sequence[Run]) -> Iterator[None]:
    """Steps of `runs` in the block may go to their own streams (CUDA): those wait for the work
    queued so far (the data, the weights), and the block ends once everything has run."""
    device = runs[0].x.device
    if device.type == "cuda":
        current = torch.cuda.current_stream(device)
        for run in runs:
            run.stream.wait_stream(current)
    yield
    synchronize(device)


def _pass_alone(run: Run) -> dict[Run, Diverged]:
    """One pass of one run, on its own stream on CUDA, timed on its own."""
    started = time.perf_counter()
    desc = f"pass {len(run.history) + 1}/{run.settings.epochs}"
    with _on_own_streams([run]), run.on_stream():
        for _ in tqdm(run.steps(), total=run.steps_per_pass, desc=desc, disable=None):
            pass
    return _finish([run], time.perf_counter() - started)


def _passes_side_by_side(runs: Sequence[Run]) -> dict[Run, Diverged]:
    """One pass of each run on CUDA, their SGD steps interleaved on their own streams; each is
    timed at the group's wall time over the number of runs (the GPU ran them side by side)."""
    started = time.perf_counter()
    with _on_own_streams(runs):
        passes = [run.steps() for run in runs]
        for _ in range(runs[0].steps_per_pass):
            for run, steps in zip(runs, passes, strict=True):
                with run.on_stream():
                    next(steps)
    return _finish(runs, (time.perf_counter() - started) / len(runs))


def train_group(
    data: FashionMNIST, members: Sequence[Member], *, device: str, deterministic: bool
) -> list[list[Metrics] | Diverged]:
    """Train every member on `data` in this process; per member its metrics per pass, or the
    Diverged that stopped it (the others go on).

    After each pass a member's metrics go to its `on_pass_end(pass, metrics)`; with a
    checkpoint, its state is saved there after every pass, and a member that finds one resumes
    after its last pass, first replaying the finished passes' metrics to `on_pass_end`. On CPU
    the members train one after another, pass by pass. Members share the batch size (their
    steps are interleaved on CUDA).
    """
    if len({m.settings.batch_size for m in members}) > 1:
        raise ValueError("the members of a group must share trainer.batch_size")
    dev = resolve_device(device)
    if dev.type == "cpu":
        reuse_cpu_memory()
    train_split = (data.train.x.to(dev), data.train.y.to(dev))
    test_split = (data.test.x.to(dev), data.test.y.to(dev))
    stopped: dict[Run, Diverged] = {}
    with own_streams(len(members), dev) as streams:
        runs = [Run(m, train_split, test_split, s) for m, s in zip(members, streams, strict=True)]
        for run in runs:
            run.replay()
        with ieee_fp32(), deterministic_kernels(deterministic):
            while active := [r for r in runs if not r.done and r not in stopped]:
                if dev.type == "cuda" and len(active) > 1:
                    stopped |= _passes_side_by_side(active)
                else:
                    for run in active:
                        stopped |= _pass_alone(run)
    return [stopped.get(run, run.history) for run in runs]


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
    measure: Measurement | None,
    chunk_size: int,
    cuda_graphs: bool,
    deterministic: bool,
    model_params: dict[str, Any] | None = None,
    on_pass_end: PassCallback | None = None,
    checkpoint: str | os.PathLike | None = None,
) -> list[Metrics]:
    """Train one run of `model` (with its variant's `model_params`) on `data` and return one
    metrics dict per pass.

    After every pass the metrics go to `on_pass_end(pass, metrics)`. With `checkpoint`, the
    run's state is saved there after every pass, and a run that finds one resumes after its
    last pass, first replaying the finished passes' metrics to `on_pass_end`. A non-finite
    training loss, or non-finite weights after a pass, raises Diverged.
    """
    settings = Settings(
        model=model,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        measure=measure,
        chunk_size=chunk_size,
        cuda_graphs=cuda_graphs,
        model_params=model_params or {},
    )
    member = Member(settings, on_pass_end, None if checkpoint is None else Path(checkpoint))
    (outcome,) = train_group(data, [member], device=device, deterministic=deterministic)
    if isinstance(outcome, Diverged):
        raise outcome
    return outcome
