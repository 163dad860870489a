"""hw3's MaxPool2d gives nn.MaxPool2d's outputs and gradients bit for bit, in the same layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hw3.engine.models import build_model
from hw3.engine.pooling import MaxPool2d, with_torch_pooling


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so that NaN equals NaN and −0.0 differs from +0.0."""
    return t.contiguous().view(torch.int32)


def awkward(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Small integers (ties in most windows, −0.0 among the zeros), NaNs and infinities."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).mul(2).round()  # round(−0.3) is −0.0
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:20]
    flat[picks[:10]] = float("nan")
    flat[picks[10:15]] = float("inf")
    flat[picks[15:]] = float("-inf")
    return x


def pooled_and_grad(pool: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple:
    x = x.clone().requires_grad_()
    out = pool(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 2},
        {"kernel_size": 3},
        {"kernel_size": 2, "stride": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"kernel_size": (2, 3), "dilation": (1, 2)},
    ],
)
@pytest.mark.parametrize("shape", [(5, 16, 28, 28), (3, 1, 7, 9), (2, 8, 14, 14)])
def test_same_values_gradients_and_layout_as_torch(kwargs: dict, shape: tuple[int, ...]):
    x = awkward(shape)
    ours, theirs = MaxPool2d(**kwargs), nn.MaxPool2d(**kwargs)
    expected = theirs(x)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    out, grad_x = pooled_and_grad(ours, x, grad)
    want_out, want_grad = pooled_and_grad(theirs, x, grad)
    assert out.shape == want_out.shape and out.stride() == want_out.stride()
    assert torch.equal(bits(out), bits(want_out))
    assert grad_x.stride() == want_grad.stride()
    assert torch.equal(bits(grad_x), bits(want_grad))
    with torch.no_grad():
        assert torch.equal(bits(ours(x)), bits(expected))


def test_unbatched_input_and_indices_are_torch_s():
    x = awkward((4, 10, 10))
    assert torch.equal(bits(MaxPool2d(2)(x)), bits(F.max_pool2d(x, 2)))
    out, idx = MaxPool2d(2, return_indices=True)(x)
    want_out, want_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(bits(out), bits(want_out)) and torch.equal(idx, want_idx)


@pytest.mark.parametrize("name", ["plain", "bn"])
def test_networks_match_torch_pooling_bit_for_bit(name: str):
    ours = build_model(name)
    theirs = with_torch_pooling(ours)
    assert sum(type(m) is MaxPool2d for m in ours.modules()) == 2
    assert [type(m) for m in theirs.modules()] == [
        nn.MaxPool2d if type(m) is MaxPool2d else type(m) for m in ours.modules()
    ]
    assert repr(theirs) == repr(ours)
    x = torch.relu(awkward((8, 1, 28, 28))).nan_to_num(posinf=1.0, neginf=0.0)
    y = torch.arange(8) % 10
    grads = []
    for net in (ours, theirs):
        loss = F.cross_entropy(net(x), y)
        grads.append([bits(g) for g in torch.autograd.grad(loss, list(net.parameters()))])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
