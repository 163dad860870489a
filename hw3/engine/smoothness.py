"""Effective local smoothness L̂(w; u) = ‖∇f(w+u) − ∇f(w)‖ / ‖u‖ along an SGD step u."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hw3.engine.device import ieee_fp32
from hw3.engine.evaluation import eval_mode, full_pass


@dataclass(frozen=True)
class Smoothness:
    """L̂ and the quantities it is made of; `loss`/`accuracy` are f(w) and accuracy at w."""

    L: float
    u_norm: float
    grad_norm: float
    loss: float
    accuracy: float


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))


@torch.no_grad()
def _restore(targets: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    for t, s in zip(targets, saved, strict=True):
        t.copy_(s)  # in place: storage stays where optimizers and CUDA graphs expect it


def effective_smoothness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_idx: torch.Tensor,
    lr: float,
    chunk_size: int,
) -> Smoothness:
    """Measure L̂ at the current weights w with u = −lr·∇(minibatch loss), leaving `model` as is.

    u comes from the minibatch `batch_idx` in train mode; both full gradients of the mean
    training loss f are taken in eval mode. Parameters, buffers (BatchNorm running statistics,
    `num_batches_tracked`), `.grad` fields and train/eval mode are exactly as before afterwards.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = list(model.buffers())
    saved_params = [p.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in buffers]
    was_training = model.training
    try:
        with ieee_fp32():
            model.train()
            idx = batch_idx.to(x.device)
            minibatch_loss = F.cross_entropy(model(x[idx]), y[idx])
            u = [-lr * g for g in torch.autograd.grad(minibatch_loss, params)]
            _restore(buffers, saved_buffers)  # that forward pass updated BN's running stats
            with eval_mode(model):
                at_w = full_pass(model, x, y, chunk_size, params)
                with torch.no_grad():
                    for p, step in zip(params, u, strict=True):
                        p.add_(step)
                at_w_plus_u = full_pass(model, x, y, chunk_size, params)
    finally:
        _restore(params, saved_params)
        _restore(buffers, saved_buffers)
        model.train(was_training)
    diff = _norm([b - a for a, b in zip(at_w.grads, at_w_plus_u.grads, strict=True)]).item()
    u_norm = _norm(u).item()
    return Smoothness(
        L=diff / u_norm if u_norm > 0 else math.nan,
        u_norm=u_norm,
        grad_norm=_norm(at_w.grads).item(),
        loss=at_w.loss,
        accuracy=at_w.accuracy,
    )
