"""Sharpness: the top eigenvalue of the training loss's Hessian, by Lanczos on Hessian-vector
products, leaving the model untouched."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hw3.engine.device import ieee_fp32
from hw3.engine.evaluation import eval_mode


def hessian_vector_product(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int,
    params: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
) -> list[torch.Tensor]:
    """H·v, H the Hessian of the mean cross-entropy over (x, y) w.r.t. `params` (current mode).

    By double backward, chunk by chunk; `.grad` fields are left untouched.
    """
    hv = [torch.zeros_like(p) for p in params]
    for start in range(0, len(y), chunk_size):
        xb, yb = x[start : start + chunk_size], y[start : start + chunk_size]
        chunk_loss = F.cross_entropy(model(xb), yb, reduction="sum")
        grads = torch.autograd.grad(chunk_loss, params, create_graph=True)
        for h, d in zip(hv, torch.autograd.grad(grads, params, grad_outputs=v), strict=True):
            h.add_(d)
    return [h.div_(len(y)) for h in hv]


def _check(examples: int | None, iters: int, tol: float) -> None:
    if examples is not None and examples < 1:
        raise ValueError(f"sharpness examples must be >= 1 or None for all; got {examples}")
    if iters < 1:
        raise ValueError(f"sharpness iterations must be >= 1; got {iters}")
    if not tol >= 0:
        raise ValueError(f"sharpness tolerance must be >= 0; got {tol}")


def _top_eigenvalue(diagonal: Sequence[float], off_diagonal: Sequence[float]) -> float:
    """The largest eigenvalue of the symmetric tridiagonal matrix with these diagonals."""
    off = torch.tensor(off_diagonal, dtype=torch.float64)
    tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(tridiagonal)[-1].item()


def top_hessian_eigenvalue(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    examples: int | None,
    chunk_size: int,
    iters: int,
    tol: float,
    generator: torch.Generator,
) -> tuple[float, int]:
    """λ_max, the largest (algebraic) Hessian eigenvalue of f_S, and the iterations it took.

    f_S is the mean eval-mode cross-entropy over the first `examples` of (x, y) (all of them
    when None or more than there are), w.r.t. the trainable parameters. Lanczos with full
    reorthogonalisation from a start vector drawn from `generator`, one Hessian-vector product
    per iteration; the estimate is the top eigenvalue of the tridiagonal matrix, which tends to
    λ_max even where a negative eigenvalue is larger in magnitude. It stops once the estimate
    changes by at most `tol` relative, after `iters` iterations, or when the Krylov space is
    exhausted (then the value is exact). Parameters, buffers, `.grad` fields and train/eval
    modes are left as they were; the global RNG is not used.
    """
    _check(examples, iters, tol)
    params = [p for p in model.parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    xs, ys = x[:examples], y[:examples]
    dtype, device = params[0].dtype, params[0].device
    start = torch.randn(sum(sizes), generator=generator, dtype=dtype, device=generator.device)
    basis = [start.to(device) / torch.linalg.vector_norm(start)]
    alphas: list[float] = []
    betas: list[float] = []
    estimate = math.nan
    with ieee_fp32(), eval_mode(model):
        for step in range(1, iters + 1):
            q = basis[-1]
            parts = [t.view_as(p) for t, p in zip(q.split(sizes), params, strict=True)]
            hv = hessian_vector_product(model, xs, ys, chunk_size, params, parts)
            w = torch.cat([h.flatten() for h in hv])
            alphas.append(torch.dot(q, w).item())
            stacked = torch.stack(basis)
            for _ in range(2):  # Gram-Schmidt twice keeps the basis orthogonal to rounding level
                w = w - stacked.T @ (stacked @ w)
            beta = torch.linalg.vector_norm(w).item()
            previous, estimate = estimate, _top_eigenvalue(alphas, betas)
            if (
                abs(estimate - previous) <= tol * abs(estimate)
                or step == len(start)  # the Krylov space is the whole space: the value is exact
                or beta <= torch.finfo(dtype).eps * abs(estimate)  # an invariant subspace: exact
            ):
                break
            betas.append(beta)
            basis.append(w / beta)
    return estimate, step
