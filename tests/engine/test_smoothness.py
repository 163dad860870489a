"""Effective smoothness against an independent float64 computation, and that it leaves no trace."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from helpers import synthetic_data
from torch import nn
from torch.func import functional_call

from hw3.engine.models import MODELS, build_model
from hw3.engine.smoothness import effective_smoothness

N_EXAMPLES, BATCH, CHUNK, PROBE_LR = 200, 32, 64, 0.5  # chunks of 64 leave a partial last one


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Reference:
    """L̂ and its ingredients, computed in float64."""

    L: float
    u_norm: float
    grad_norm: float
    loss: float
    accuracy: float


def trained_model(name: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A `name` net after a few SGD steps (non-trivial BN statistics), with `.grad` set."""
    torch.manual_seed(0)
    model = build_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        idx = torch.randint(0, len(y), (BATCH,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return model


def reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_idx: torch.Tensor, lr: float
) -> Reference:
    """L̂ in float64 on a copy of `model`, from flattened parameters via functional_call."""
    net = copy.deepcopy(model).double()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    w = torch.cat([p.detach().flatten() for _, p in net.named_parameters()])
    x64 = x.double()

    def loss(flat: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, train: bool) -> torch.Tensor:
        """Mean cross-entropy at flat parameters; BN buffers are copies, so never updated."""
        params = dict(zip(names, torch.split(flat, [s.numel() for s in shapes]), strict=True))
        params = {n: t.view(s) for (n, t), s in zip(params.items(), shapes, strict=True)}
        buffers = {n: b.clone() for n, b in net.named_buffers()}
        net.train(train)
        return F.cross_entropy(functional_call(net, (params, buffers), (xs,)), ys)

    def grad(flat: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, train: bool) -> torch.Tensor:
        """∇ of `loss` w.r.t. the flat parameter vector."""
        flat = flat.clone().requires_grad_(True)
        return torch.autograd.grad(loss(flat, xs, ys, train), flat)[0]

    u = -lr * grad(w, x64[batch_idx], y[batch_idx], train=True)
    flat = w.clone().requires_grad_(True)
    at_w = loss(flat, x64, y, train=False)
    g0 = torch.autograd.grad(at_w, flat)[0]
    g1 = grad(w + u, x64, y, train=False)
    with torch.no_grad():
        net.eval()
        logits = functional_call(net, dict(net.named_parameters()), (x64,))
    return Reference(
        L=float((g1 - g0).norm() / u.norm()),
        u_norm=float(u.norm()),
        grad_norm=float(g0.norm()),
        loss=float(at_w.detach()),
        accuracy=float((logits.argmax(1) == y).double().mean()),
    )


def minibatch_grad_norm(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
) -> float:
    """‖∇ minibatch loss‖ in `model`'s current mode."""
    grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), list(model.parameters()))
    return float(torch.cat([g.flatten() for g in grads]).norm())


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything about `model` a measurement must not change, cloned."""
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "data_ptrs": [p.data_ptr() for p in model.parameters()],
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    """Bit-identical parameters, buffers and grads, same storage, same train/eval modes."""
    after = snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(before["params"], after["params"], strict=True))
    assert before["data_ptrs"] == after["data_ptrs"]
    assert before["buffers"].keys() == after["buffers"].keys()
    for name, b in before["buffers"].items():
        a = after["buffers"][name]
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["modes"] == after["modes"]


@pytest.fixture(scope="module")
def examples() -> tuple[torch.Tensor, torch.Tensor]:
    """A few hundred synthetic training examples."""
    train = synthetic_data(n_train=N_EXAMPLES, n_test=1, seed=3).train
    return train.x, train.y


@pytest.mark.parametrize("name", MODELS)
def test_matches_float64_reference(name: str, examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model(name, x, y)
    batch_idx = torch.randperm(N_EXAMPLES, generator=torch.Generator().manual_seed(2))[:BATCH]
    expected = reference(model, x, y, batch_idx, PROBE_LR)
    if name == "bn":  # guards: BN's statistics are non-trivial and u differs between modes
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert int(bn.num_batches_tracked) == 5
        assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        eval_u_norm = PROBE_LR * minibatch_grad_norm(copy.deepcopy(model).eval(), x, y, batch_idx)
        assert eval_u_norm != pytest.approx(expected.u_norm, rel=1e-3)
    got = effective_smoothness(model, x, y, batch_idx, PROBE_LR, chunk_size=CHUNK)
    assert math.isfinite(got.L) and got.L > 0
    assert pytest.approx(expected.L, rel=1e-4) == got.L
    assert got.u_norm == pytest.approx(expected.u_norm, rel=1e-5)
    assert got.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)
    assert got.loss == pytest.approx(expected.loss, rel=1e-5)
    assert got.accuracy == pytest.approx(expected.accuracy, abs=1.5 / N_EXAMPLES)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [True, False])
def test_model_state_is_bit_identical_afterwards(
    name: str, training: bool, examples: tuple[torch.Tensor, torch.Tensor]
):
    x, y = examples
    model = trained_model(name, x, y)  # its last step left `.grad` fields set
    model.train(training)
    assert all(p.grad is not None for p in model.parameters())
    before = snapshot(model)
    rng = torch.get_rng_state()
    effective_smoothness(model, x, y, torch.arange(BATCH), PROBE_LR, chunk_size=CHUNK)
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_grads_that_are_none_stay_none(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = build_model("bn")
    effective_smoothness(model, x, y, torch.arange(BATCH), PROBE_LR, chunk_size=CHUNK)
    assert all(p.grad is None for p in model.parameters())


def test_chunk_size_does_not_matter(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model("bn", x, y)
    idx = torch.arange(BATCH)
    whole = effective_smoothness(model, x, y, idx, PROBE_LR, chunk_size=N_EXAMPLES)
    chunked = effective_smoothness(model, x, y, idx, PROBE_LR, chunk_size=33)
    assert pytest.approx(whole.L, rel=1e-4) == chunked.L
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-6)
    assert chunked.u_norm == whole.u_norm  # u is one minibatch gradient either way
