"""Effective smoothness against an independent float64 computation, against today's algorithm
kept below bit for bit, and that it leaves no trace."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from support.data import model_params, synthetic_data
from torch import nn
from torch.func import functional_call

from hw3.engine.choices import MODELS
from hw3.engine.evaluation import eval_mode, full_pass
from hw3.engine.models import build_model, draw_noise_from
from hw3.engine.smoothness import effective_smoothness, measure

N_EXAMPLES, BATCH, CHUNK, PROBE_LR = 200, 32, 64, 0.5  # chunks of 64 leave a partial last one
K = 3  # directions when several are measured
# Compared with float64 references: every variant but bn_noisy, whose train-mode forward pass
# draws noise that a reference would have to draw alike (the measurement code is the same).
NOISELESS = [m for m in MODELS if m != "bn_noisy"]
PROFILE = (0.25, 0.5, 1.0, 2.0, 4.0)  # the five scales
TODAYS_KEYS = {
    "train/loss",
    "train/acc",
    "smoothness/L",
    "smoothness/lr_max",
    "smoothness/u_norm",
    "smoothness/grad_norm",
}
PROFILE_KEYS = {"smoothness/loss_range", "smoothness/grad_pred", "smoothness/beta"}
SPREAD_KEYS = {"smoothness/L_std", "smoothness/L_min", "smoothness/L_max"}


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Reference:
    """Per direction L̂, ‖u‖ and the profile; f(w), ‖∇f(w)‖ and accuracy; all in float64."""

    L: list[float]
    u_norm: list[float]
    loss_range: list[float]
    grad_pred: list[float]
    beta: list[float]
    grad_norm: float
    loss: float
    accuracy: float


def trained_model(name: str, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A `name` net after a few SGD steps (non-trivial BN statistics), with `.grad` set."""
    torch.manual_seed(0)
    model = build_model(name, **model_params(name))
    draw_noise_from(model, torch.Generator().manual_seed(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        idx = torch.randint(0, len(y), (BATCH,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return model


def probe_batches(k: int) -> list[torch.Tensor]:
    """`k` disjoint random minibatches of the examples."""
    order = torch.randperm(N_EXAMPLES, generator=torch.Generator().manual_seed(2))
    return [order[i * BATCH : (i + 1) * BATCH] for i in range(k)]


def reference(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: Sequence[torch.Tensor],
    lr: float,
    scales: Sequence[float],
) -> Reference:
    """L̂ and the profile in float64 on a copy of `model`, from flat parameters (functional_call)."""
    net = copy.deepcopy(model).double()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    w = torch.cat([p.detach().flatten() for _, p in net.named_parameters()])
    x64 = x.double()

    def loss_and_grad(
        flat: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, train: bool
    ) -> tuple[float, torch.Tensor]:
        """Mean cross-entropy at flat parameters and its gradient; BN buffers are copies."""
        flat = flat.detach().clone().requires_grad_(True)
        params = dict(zip(names, torch.split(flat, [s.numel() for s in shapes]), strict=True))
        params = {n: t.view(s) for (n, t), s in zip(params.items(), shapes, strict=True)}
        buffers = {n: b.clone() for n, b in net.named_buffers()}
        net.train(train)
        loss = F.cross_entropy(functional_call(net, (params, buffers), (xs,)), ys)
        return float(loss.detach()), torch.autograd.grad(loss, flat)[0]

    f0, g0 = loss_and_grad(w, x64, y, train=False)
    result: dict[str, list[float]] = {k: [] for k in ("L", "u_norm", "loss_range", "grad_pred")}
    result["beta"] = []
    for idx in batches:
        u = -lr * loss_and_grad(w, x64[idx], y[idx], train=True)[1]
        line = {c: loss_and_grad(w + c * u, x64, y, train=False) for c in {1.0, *scales}}
        diff = {c: float((g - g0).norm()) for c, (_, g) in line.items()}
        losses = [f0, *(line[c][0] for c in scales)]
        result["L"].append(diff[1.0] / float(u.norm()))
        result["u_norm"].append(float(u.norm()))
        result["loss_range"].append(max(losses) - min(losses))
        result["grad_pred"].append(max(diff[c] for c in scales))
        result["beta"].append(max(diff[c] / float((c * u).norm()) for c in scales))
    with torch.no_grad():
        net.eval()
        logits = functional_call(net, dict(net.named_parameters()), (x64,))
    return Reference(
        **result,
        grad_norm=float(g0.norm()),
        loss=f0,
        accuracy=float((logits.argmax(1) == y).double().mean()),
    )


def todays_smoothness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_idx: torch.Tensor,
    lr: float,
    chunk_size: int,
) -> dict[str, float]:
    """The metrics of effective_smoothness as it was before several directions, verbatim."""
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = list(model.buffers())
    saved_params = [p.detach().clone() for p in params]
    saved_buffers = [b.detach().clone() for b in buffers]
    was_training = model.training

    def norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))

    model.train()
    idx = batch_idx.to(x.device)
    minibatch_loss = F.cross_entropy(model(x[idx]), y[idx])
    u = [-lr * g for g in torch.autograd.grad(minibatch_loss, params)]
    with torch.no_grad():
        for b, s in zip(buffers, saved_buffers, strict=True):
            b.copy_(s)
    with eval_mode(model):
        at_w = full_pass(model, x, y, chunk_size, params)
        with torch.no_grad():
            for p, step in zip(params, u, strict=True):
                p.add_(step)
        at_w_plus_u = full_pass(model, x, y, chunk_size, params)
    with torch.no_grad():
        for p, s in zip(params, saved_params, strict=True):
            p.copy_(s)
    model.train(was_training)
    diff = norm([b - a for a, b in zip(at_w.grads, at_w_plus_u.grads, strict=True)]).item()
    u_norm = norm(u).item()
    L = diff / u_norm if u_norm > 0 else math.nan
    return {
        "train/loss": at_w.loss,
        "train/acc": at_w.accuracy,
        "smoothness/L": L,
        "smoothness/lr_max": 1 / L if L > 0 else math.inf,
        "smoothness/u_norm": u_norm,
        "smoothness/grad_norm": norm(at_w.grads).item(),
    }


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


def expected_metrics(ref: Reference) -> dict[str, float]:
    """The metrics `measure` should log, from the float64 reference."""
    L = statistics.fmean(ref.L)
    metrics = {
        "train/loss": ref.loss,
        "train/acc": ref.accuracy,
        "smoothness/L": L,
        "smoothness/lr_max": 1 / L,
        "smoothness/u_norm": statistics.fmean(ref.u_norm),
        "smoothness/grad_norm": ref.grad_norm,
        "smoothness/loss_range": statistics.fmean(ref.loss_range),
        "smoothness/grad_pred": statistics.fmean(ref.grad_pred),
        "smoothness/beta": statistics.fmean(ref.beta),
    }
    if len(ref.L) > 1:
        metrics |= {
            "smoothness/L_std": float(torch.tensor(ref.L).std()),  # ddof = 1
            "smoothness/L_min": min(ref.L),
            "smoothness/L_max": max(ref.L),
        }
    return metrics


@pytest.mark.parametrize("name", NOISELESS)
def test_matches_float64_reference(name: str, examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model(name, x, y)
    [batch_idx] = probe_batches(1)
    expected = reference(model, x, y, [batch_idx], PROBE_LR, [1.0])
    if name == "bn":  # guards: BN's statistics are non-trivial and u differs between modes
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        assert int(bn.num_batches_tracked) == 5
        assert not torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        eval_u_norm = PROBE_LR * minibatch_grad_norm(copy.deepcopy(model).eval(), x, y, batch_idx)
        assert eval_u_norm != pytest.approx(expected.u_norm[0], rel=1e-3)
    got = effective_smoothness(model, x, y, batch_idx, PROBE_LR, chunk_size=CHUNK)
    assert math.isfinite(got.L) and got.L > 0
    assert pytest.approx(expected.L[0], rel=1e-4) == got.L
    assert got.u_norm == pytest.approx(expected.u_norm[0], rel=1e-5)
    assert got.grad_norm == pytest.approx(expected.grad_norm, rel=1e-5)
    assert got.loss == pytest.approx(expected.loss, rel=1e-5)
    assert got.accuracy == pytest.approx(expected.accuracy, abs=1.5 / N_EXAMPLES)


@pytest.mark.parametrize(
    ("name", "scales"),
    # every model on the profile (plain's and bn's take seconds: slow); lines without
    # c = 1 on the fastest model
    [
        *(
            pytest.param(name, PROFILE, marks=[pytest.mark.slow] if name != "stride" else [])
            for name in NOISELESS
        ),
        ("stride", (0.25, 0.5)),
        ("stride", (-0.5, 3.0)),
    ],
    ids=str,
)
def test_directions_and_profile_match_float64_reference(
    name: str, scales: tuple[float, ...], examples: tuple[torch.Tensor, torch.Tensor]
):
    x, y = examples
    model = trained_model(name, x, y)
    batches = probe_batches(K)
    expected = reference(model, x, y, batches, PROBE_LR, scales)
    assert statistics.stdev(expected.L) > 1e-3 * statistics.fmean(expected.L)  # they differ
    got = measure(model, x, y, batches, PROBE_LR, scales, chunk_size=CHUNK)
    for d, L, u_norm, loss_range, grad_pred, beta in zip(
        got.directions,
        expected.L,
        expected.u_norm,
        expected.loss_range,
        expected.grad_pred,
        expected.beta,
        strict=True,
    ):
        assert pytest.approx(L, rel=1e-4) == d.L
        assert d.u_norm == pytest.approx(u_norm, rel=1e-5)
        assert d.loss_range == pytest.approx(loss_range, rel=1e-3, abs=1e-7)
        assert d.grad_pred == pytest.approx(grad_pred, rel=1e-4)
        assert d.beta == pytest.approx(beta, rel=1e-4)
    metrics, wanted = got.metrics(), expected_metrics(expected)
    assert metrics.keys() == wanted.keys() == TODAYS_KEYS | PROFILE_KEYS | SPREAD_KEYS
    for key, value in wanted.items():
        tolerance = {"abs": 1.5 / N_EXAMPLES} if key == "train/acc" else {"rel": 1e-3, "abs": 1e-7}
        assert metrics[key] == pytest.approx(value, **tolerance), key


@pytest.mark.parametrize("name", NOISELESS)
def test_one_direction_is_todays_measurement_bit_for_bit(
    name: str, examples: tuple[torch.Tensor, torch.Tensor]
):
    x, y = examples
    model = trained_model(name, x, y)
    [batch_idx] = probe_batches(1)
    today = todays_smoothness(copy.deepcopy(model), x, y, batch_idx, PROBE_LR, CHUNK)
    metrics = measure(model, x, y, [batch_idx], PROBE_LR, [1.0], CHUNK).metrics()
    assert metrics.keys() == TODAYS_KEYS | PROFILE_KEYS
    assert {k: metrics[k] for k in TODAYS_KEYS} == today
    wrapped = effective_smoothness(model, x, y, batch_idx, PROBE_LR, CHUNK)
    assert wrapped.metrics() == metrics


@pytest.mark.parametrize("scales", [(1.0,), PROFILE], ids=str)
def test_first_of_several_directions_is_the_single_direction(
    scales: tuple[float, ...], examples: tuple[torch.Tensor, torch.Tensor]
):
    x, y = examples
    model = trained_model("bn", x, y)
    batches = probe_batches(K)
    one = measure(model, x, y, batches[:1], PROBE_LR, scales, CHUNK)
    several = measure(model, x, y, batches, PROBE_LR, scales, CHUNK)
    assert several.directions[0] == one.directions[0]
    assert several.directions[1] != one.directions[0]
    assert (several.grad_norm, several.loss, several.accuracy) == (
        one.grad_norm,
        one.loss,
        one.accuracy,
    )


def test_unit_scale_gives_beta_equal_to_L(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model("plain", x, y)
    got = measure(model, x, y, probe_batches(K), PROBE_LR, [1.0], CHUNK)
    for d in got.directions:
        assert d.beta == d.L
        assert d.grad_pred / d.u_norm == d.L
    metrics = got.metrics()
    assert metrics["smoothness/beta"] == metrics["smoothness/L"]


def test_loss_range_includes_f_at_w(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model("plain", x, y)
    batches = probe_batches(1)
    [expected] = reference(model, x, y, batches, PROBE_LR, [2.0]).loss_range
    [d] = measure(model, x, y, batches, PROBE_LR, [2.0], CHUNK).directions
    assert expected > 1e-4  # one point on the line: only f(w) makes the range non-zero
    assert d.loss_range == pytest.approx(expected, rel=1e-3)


def test_repeated_scales_change_nothing(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model("plain", x, y)
    batches = probe_batches(2)
    once = measure(model, x, y, batches, PROBE_LR, [0.5, 2.0], CHUNK)
    assert measure(model, x, y, batches, PROBE_LR, [2.0, 2.0, 0.5, 2], CHUNK) == once


@pytest.mark.parametrize(
    ("batches", "scales", "message"),
    [
        (0, [1.0], "at least one"),
        (1, [], "scales must be"),
        (1, [1.0, 0.0], "non-zero"),
        (1, [math.nan], "finite"),
        (1, [math.inf], "finite"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    batches: int, scales: list[float], message: str, examples: tuple[torch.Tensor, torch.Tensor]
):
    x, y = examples
    model = build_model("plain")
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        measure(model, x, y, probe_batches(batches), PROBE_LR, scales, CHUNK)
    assert_unchanged(model, before)


def one_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Today's call: one direction, scales [1]."""
    effective_smoothness(model, x, y, torch.arange(BATCH), PROBE_LR, chunk_size=CHUNK)


def several_directions_and_scales(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """K directions, a line with a negative point and without c = 1."""
    measure(model, x, y, probe_batches(K), PROBE_LR, [-0.5, 2.0], chunk_size=CHUNK)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("how", [one_direction, several_directions_and_scales])
def test_model_state_is_bit_identical_afterwards(
    name: str,
    training: bool,
    how: Callable[[nn.Module, torch.Tensor, torch.Tensor], None],
    examples: tuple[torch.Tensor, torch.Tensor],
):
    x, y = examples
    model = trained_model(name, x, y)  # its last step left `.grad` fields set
    model.train(training)
    assert all(p.grad is not None for p in model.parameters())
    before = snapshot(model)
    rng = torch.get_rng_state()
    how(model, x, y)
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_grads_that_are_none_stay_none(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = build_model("bn")
    several_directions_and_scales(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_chunk_size_does_not_matter(examples: tuple[torch.Tensor, torch.Tensor]):
    x, y = examples
    model = trained_model("bn", x, y)
    batches = probe_batches(2)
    whole = measure(model, x, y, batches, PROBE_LR, PROFILE, chunk_size=N_EXAMPLES)
    chunked = measure(model, x, y, batches, PROBE_LR, PROFILE, chunk_size=33)
    for a, b in zip(whole.directions, chunked.directions, strict=True):
        assert pytest.approx(a.L, rel=1e-4) == b.L
        assert pytest.approx(a.beta, rel=1e-4) == b.beta
        assert b.u_norm == a.u_norm  # u is one minibatch gradient either way
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-6)
