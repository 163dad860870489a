"""Effective local smoothness along SGD steps: L̂ over K directions and the step-size profile.

For each probe minibatch k, u_k = −lr·∇(minibatch loss), and along the line w + c·u_k

    L̂_k    = ‖∇f(w+u_k) − ∇f(w)‖ / ‖u_k‖                   (c = 1, whether or not in `scales`)
    range_k = max − min of {f(w)} ∪ {f(w + c·u_k) : c ∈ scales}
    pred_k  = max over c ∈ scales of ‖∇f(w+c·u_k) − ∇f(w)‖
    beta_k  = max over c ∈ scales of ‖∇f(w+c·u_k) − ∇f(w)‖ / ‖c·u_k‖

(Santurkar et al. 2018, Sec. 3.1), f the mean training loss in eval mode. ∇f(w) is computed
once and shared by all directions; each further point on a line costs one full-gradient pass.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hw3.engine.device import ieee_fp32
from hw3.engine.evaluation import FullPass, eval_mode, full_pass


@dataclass(frozen=True)
class Direction:
    """One probe direction u: L̂ at c = 1, ‖u‖, and the profile over the scales c."""

    L: float
    u_norm: float
    loss_range: float
    grad_pred: float
    beta: float


@dataclass(frozen=True)
class Smoothness:
    """One measurement at w: its directions, ‖∇f(w)‖, f(w) (`loss`) and accuracy at w."""

    directions: tuple[Direction, ...]
    grad_norm: float
    loss: float
    accuracy: float

    @property
    def L(self) -> float:
        """L̂: the mean over the directions (the one direction's value when there is one)."""
        return statistics.fmean(d.L for d in self.directions)

    @property
    def u_norm(self) -> float:
        """The mean ‖u‖ over the directions."""
        return statistics.fmean(d.u_norm for d in self.directions)

    def metrics(self) -> dict[str, float]:
        """The logged metrics; L_std (sample std), L_min and L_max only with several directions."""
        L = self.L
        metrics = {
            "train/loss": self.loss,
            "train/acc": self.accuracy,
            "smoothness/L": L,
            "smoothness/lr_max": 1 / L if L > 0 else math.inf,
            "smoothness/u_norm": self.u_norm,
            "smoothness/grad_norm": self.grad_norm,
            "smoothness/loss_range": statistics.fmean(d.loss_range for d in self.directions),
            "smoothness/grad_pred": statistics.fmean(d.grad_pred for d in self.directions),
            "smoothness/beta": statistics.fmean(d.beta for d in self.directions),
        }
        if len(self.directions) > 1:
            values = [d.L for d in self.directions]
            metrics |= {
                "smoothness/L_std": statistics.stdev(values),
                "smoothness/L_min": min(values),
                "smoothness/L_max": max(values),
            }
        return metrics


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))


@torch.no_grad()
def _restore(targets: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    for t, s in zip(targets, saved, strict=True):
        t.copy_(s)  # in place: storage stays where optimizers and CUDA graphs expect it


def _check(batches: Sequence[torch.Tensor], scales: Sequence[float]) -> None:
    if len(batches) == 0:
        raise ValueError("no probe minibatch to measure along: pass at least one (directions >= 1)")
    if len(scales) == 0 or not all(math.isfinite(c) and c != 0 for c in scales):
        raise ValueError(
            f"scales must be finite, non-zero step multipliers, e.g. [1]; got {scales}"
        )


def _line(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int,
    params: Sequence[torch.Tensor],
    w: Sequence[torch.Tensor],
    at_w: FullPass,
    u: Sequence[torch.Tensor],
    scales: Sequence[float],
) -> Direction:
    """L̂ and the profile along w + c·u; leaves the parameters at some point of the line."""
    seen: dict[float, tuple[float, float]] = {}  # c → (f(w + c·u), ‖∇f(w + c·u) − ∇f(w)‖)
    for c in dict.fromkeys([1.0, *scales]):  # c = 1 first (L̂); a repeated scale costs nothing
        with torch.no_grad():
            for p, p0, step in zip(params, w, u, strict=True):
                p.copy_(p0).add_(step, alpha=c)
        at = full_pass(model, x, y, chunk_size, params)
        diff = _norm([b - a for a, b in zip(at_w.grads, at.grads, strict=True)]).item()
        seen[c] = (at.loss, diff)
    u_norm = _norm(u).item()
    losses = [at_w.loss, *(seen[c][0] for c in scales)]
    return Direction(
        L=seen[1.0][1] / u_norm if u_norm > 0 else math.nan,
        u_norm=u_norm,
        loss_range=max(losses) - min(losses),
        grad_pred=max(seen[c][1] for c in scales),
        beta=max(seen[c][1] / (abs(c) * u_norm) for c in scales) if u_norm > 0 else math.nan,
    )


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Sequence[torch.Tensor],
    lr: float,
    scales: Sequence[float],
    chunk_size: int,
) -> Smoothness:
    """Measure L̂ and the step-size profile at the current weights w, leaving `model` as is.

    One direction per minibatch index tensor in `batches`: u_k = −lr·∇(loss on batch k) in
    train mode; f and its full gradients are taken in eval mode, ∇f(w) once for all of them.
    Each direction is computed on its own, so direction k's numbers do not depend on the other
    batches, and one batch with scales [1] gives exactly the single-direction L̂.
    Parameters, buffers (BatchNorm running statistics, `num_batches_tracked`), `.grad` fields
    and train/eval mode are exactly as before afterwards; the global RNG is not used.
    """
    _check(batches, scales)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = list(model.buffers())
    saved_params = [p.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in buffers]
    was_training = model.training
    try:
        with ieee_fp32():
            model.train()
            us = []
            for batch_idx in batches:
                idx = batch_idx.to(x.device)
                minibatch_loss = F.cross_entropy(model(x[idx]), y[idx])
                us.append([-lr * g for g in torch.autograd.grad(minibatch_loss, params)])
                _restore(buffers, saved_buffers)  # the forward pass updated BN's running stats
            with eval_mode(model):
                at_w = full_pass(model, x, y, chunk_size, params)
                directions = tuple(
                    _line(model, x, y, chunk_size, params, saved_params, at_w, u, scales)
                    for u in us
                )
    finally:
        _restore(params, saved_params)
        _restore(buffers, saved_buffers)
        model.train(was_training)
    return Smoothness(
        directions=directions,
        grad_norm=_norm(at_w.grads).item(),
        loss=at_w.loss,
        accuracy=at_w.accuracy,
    )


def effective_smoothness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_idx: torch.Tensor,
    lr: float,
    chunk_size: int,
) -> Smoothness:
    """L̂ along the one SGD step from the minibatch `batch_idx`: `measure` with scales [1]."""
    return measure(model, x, y, [batch_idx], lr, [1.0], chunk_size)
