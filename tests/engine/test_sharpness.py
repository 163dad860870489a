"""Sharpness against the exact Hessian's top eigenvalue in float64, and that it leaves no trace."""

from __future__ import annotations

import copy
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from support.data import synthetic_data
from test_smoothness import assert_unchanged, snapshot, trained_model
from torch import nn
from torch.func import functional_call

from hw3.engine.choices import MODELS
from hw3.engine.pooling import MaxPool2d
from hw3.engine.sharpness import top_hessian_eigenvalue

N_EXAMPLES, SIDE, CLASSES = 24, 6, 3
CHUNK = 7  # leaves a partial last chunk
EXACT_TOL = 1e-12  # Lanczos tolerance when the exact value is wanted

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(bn: bool) -> nn.Module:
    """A float64 ConvNet small enough for its exact Hessian: conv, pool, [BN,] conv, linear."""
    torch.manual_seed(3)
    layers = [nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), MaxPool2d(2)]
    if bn:
        layers.append(nn.BatchNorm2d(2))
    layers += [nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Flatten()]
    layers.append(nn.Linear(2 * (SIDE // 2) ** 2, CLASSES))
    return nn.Sequential(*layers).double()


def chain_net() -> nn.Module:
    """z = (t, −t)·b·a·x with t = a = b = 0.2: at this point λ_min ≈ −0.32 beats λ_max ≈ 0.20."""
    net = nn.Sequential(
        nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False), nn.Linear(1, 2, bias=False)
    ).double()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.2)
        net[2].weight[1] = -0.2
    return net


@pytest.fixture(scope="module")
def examples() -> tuple[torch.Tensor, torch.Tensor]:
    """Random float64 images and labels for the tiny nets."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_EXAMPLES, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (N_EXAMPLES,), generator=g)


def with_bn_statistics(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """`net` after two train-mode forward passes: BatchNorm's running statistics non-trivial."""
    net.train()
    with torch.no_grad():
        net(x[:12])
        net(x[12:])
    return net


def exact_eigenvalues(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All eigenvalues of the Hessian of the mean eval-mode loss, ascending (float64)."""
    net = copy.deepcopy(net).eval()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    buffers = dict(net.named_buffers())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return F.cross_entropy(functional_call(net, (params, buffers), (x,)), y)

    w = torch.cat([p.detach().flatten() for p in net.parameters()])
    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w))


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("bn", [False, True])
def test_matches_the_exact_hessian(bn: bool, examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    net = with_bn_statistics(tiny_net(bn), x)
    exact = exact_eigenvalues(net, x, y)
    assert exact[0] < 0 < exact[-1]  # indefinite: the top eigenvalue is not a trivial bound
    value, used = top_hessian_eigenvalue(
        net, x, y, None, CHUNK, n_params(net), EXACT_TOL, torch.Generator().manual_seed(0)
    )
    assert value == pytest.approx(float(exact[-1]), rel=1e-9)
    assert 2 <= used < n_params(net)  # converged before the Krylov space ran out


def test_top_algebraic_eigenvalue_when_a_negative_one_dominates():
    net = chain_net()
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.tensor([0])
    exact = exact_eigenvalues(net, x, y)
    assert -exact[0] > 1.5 * exact[-1] > 0  # the largest |λ| is negative
    value, _ = top_hessian_eigenvalue(net, x, y, None, 1, 10, 0.0, torch.Generator().manual_seed(0))
    assert value == pytest.approx(float(exact[-1]), rel=1e-9)


def test_only_the_first_examples_count(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    net = with_bn_statistics(tiny_net(bn=True), x)
    subset, everything = (
        exact_eigenvalues(net, x[:10], y[:10])[-1],
        exact_eigenvalues(net, x, y)[-1],
    )
    assert abs(subset - everything) > 0.05 * everything  # the subset's Hessian is another one
    value, _ = top_hessian_eigenvalue(
        net, x, y, 10, CHUNK, n_params(net), EXACT_TOL, torch.Generator().manual_seed(0)
    )
    assert value == pytest.approx(float(subset), rel=1e-9)
    too_many, _ = top_hessian_eigenvalue(
        net,
        x,
        y,
        10 * N_EXAMPLES,
        CHUNK,
        n_params(net),
        EXACT_TOL,
        torch.Generator().manual_seed(0),
    )
    assert too_many == pytest.approx(float(everything), rel=1e-9)


def test_iterations_and_tolerance_are_honoured(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    net = tiny_net(bn=False)

    def estimate(iters: int, tol: float) -> tuple[float, int]:
        return top_hessian_eigenvalue(
            net, x, y, None, CHUNK, iters, tol, torch.Generator().manual_seed(5)
        )

    # With tol = 0 the run goes on: the estimate after j iterations, for j = 1..12.
    steps = [estimate(j, 0.0) for j in range(1, 13)]
    assert [used for _, used in steps] == list(range(1, 13))
    estimates = [value for value, _ in steps]
    tol = 1e-3
    change = [abs(b - a) / abs(b) for a, b in pairwise(estimates)]
    first = next(j for j, c in enumerate(change, start=2) if c <= tol)  # iterations to stop at
    assert 3 <= first <= 12  # the tolerance stops it, neither at once nor never
    assert estimate(100, tol) == (estimates[first - 1], first)


@pytest.mark.parametrize(
    ("examples_", "iters", "tol", "message"),
    [(0, 5, 1e-3, "examples must be"), (None, 0, 1e-3, "iterations"), (None, 5, -1.0, "tolerance")],
)
def test_bad_arguments_are_one_line_errors(
    examples_: int | None, iters: int, tol: float, message: str
):
    net = tiny_net(bn=False)
    x, y = torch.zeros(2, 1, SIDE, SIDE, dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        top_hessian_eigenvalue(net, x, y, examples_, CHUNK, iters, tol, torch.Generator())


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """A few FashionMNIST-shaped examples for the real nets."""
    train = synthetic_data(n_train=64, n_test=1, seed=4).train
    return train.x, train.y


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [True, False])
def test_model_state_is_bit_identical_afterwards(
    name: str, training: bool, images: tuple[torch.Tensor, torch.Tensor]
):
    x, y = images
    model = trained_model(name, x, y)  # its last step left `.grad` fields set
    model.train(training)
    before = snapshot(model)
    rng = torch.get_rng_state()
    value, used = top_hessian_eigenvalue(
        model, x, y, 40, 16, 3, 0.0, torch.Generator().manual_seed(0)
    )
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert used == 3 and value > 0


def test_grads_that_are_none_stay_none(images: tuple[torch.Tensor, torch.Tensor]):
    x, y = images
    model = trained_model("bn", x, y)
    model.zero_grad(set_to_none=True)
    top_hessian_eigenvalue(model, x, y, 16, 16, 2, 0.0, torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())
