"""Full passes over a split: mean loss, accuracy and, optionally, the full gradient."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class FullPass:
    """Mean loss and accuracy over a split, and ∇ of the mean loss when it was asked for."""

    loss: float
    accuracy: float
    grads: list[torch.Tensor] | None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put `model` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def full_pass(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int,
    params: Sequence[torch.Tensor] | None = None,
) -> FullPass:
    """Mean cross-entropy and accuracy of `model` (in its current mode) over all of (x, y).

    With `params`, also the gradient of the mean loss w.r.t. them, summed chunk by chunk;
    `.grad` fields are left untouched. One host synchronisation, at the end.
    """
    n = len(y)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    grads = None if params is None else [torch.zeros_like(p) for p in params]
    with torch.set_grad_enabled(params is not None):
        for start in range(0, n, chunk_size):
            xb, yb = x[start : start + chunk_size], y[start : start + chunk_size]
            logits = model(xb)
            chunk_loss = F.cross_entropy(logits, yb, reduction="sum")
            if grads is not None:
                for g, d in zip(grads, torch.autograd.grad(chunk_loss, params), strict=True):
                    g.add_(d)
            loss_sum += chunk_loss.detach()
            correct += (logits.detach().argmax(1) == yb).sum()
    if grads is not None:
        grads = [g.div_(n) for g in grads]
    return FullPass(loss=loss_sum.item() / n, accuracy=correct.item() / n, grads=grads)
