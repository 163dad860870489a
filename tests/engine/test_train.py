"""Training on tiny synthetic data: determinism, metrics, divergence, measuring, resuming."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from support.data import (
    PROJECT_DATA,
    model_params,
    real_data_location,
    synthetic_data,
    without_real_data,
)
from support.runs import BASE_METRICS, L_HAT, SMOOTHNESS_METRICS, Interrupt, untimed

import hw3.engine.train
from hw3.engine.data import FashionMNIST, Split, load_fashion_mnist
from hw3.engine.device import synchronize
from hw3.engine.evaluation import full_pass
from hw3.engine.files import OFFICIAL_MD5, SYSTEM_DIR, raw_dir
from hw3.engine.models import MODELS, build_model
from hw3.engine.smoothness import measure
from hw3.engine.train import Diverged, Measurement, Metrics, derive_seed, train

FIT_KEYS = ("train/loss", "train/loss_running", "train/acc", "test/loss", "test/acc")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data() -> FashionMNIST:
    """256 training and 128 test examples of noise with random labels."""
    return synthetic_data(n_train=256, n_test=128, seed=0)


def run(data: FashionMNIST, **overrides) -> list[Metrics]:
    """`train` on CPU with small settings (momentum and weight decay on: optimizer state)."""
    options = {
        "model": "bn",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "epochs": 2,
        "batch_size": 32,
        "seed": 0,
        "device": "cpu",
        "measure": L_HAT,
        "chunk_size": 100,
        "cuda_graphs": False,
        "deterministic": True,
    }
    options |= overrides
    return train(data, **options, model_params=model_params(options["model"]))


def test_same_seed_same_metrics(data: FashionMNIST):
    first, second = run(data), run(data)
    assert len(first) == 2
    assert untimed(first) == untimed(second)
    other = run(data, seed=1)
    for a, b in zip(untimed(first), untimed(other), strict=True):
        assert a["train/loss_running"] != b["train/loss_running"]
        assert a["smoothness/L"] != b["smoothness/L"]


def test_history_keys(data: FashionMNIST):
    with_probe = run(data, epochs=1)
    without = run(data, epochs=1, measure=None)
    assert set(with_probe[0]) == BASE_METRICS | SMOOTHNESS_METRICS
    assert set(without[0]) == BASE_METRICS
    metrics = with_probe[0]
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert metrics["smoothness/L"] > 0
    assert metrics["smoothness/lr_max"] == pytest.approx(1 / metrics["smoothness/L"])
    for split, n in (("train", len(data.train)), ("test", len(data.test))):
        correct = metrics[f"{split}/acc"] * n  # a share of the split's examples, not of chunks
        assert correct == pytest.approx(round(correct), abs=1e-9), split


class Clock:
    """A stand-in for the `time` module whose perf_counter moves only when a wrapped call ends."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def taking(self, seconds: float, fn: Callable) -> Callable:
        """`fn`, made to take `seconds` on this clock."""

        def timed(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.now += seconds
            return result

        return timed


def test_each_time_metric_spans_its_own_phase(data: FashionMNIST, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(hw3.engine.train, "time", clock)
    # The steps take 1 s (they end with a device sync), the measurement 10 s, a full pass 100 s.
    monkeypatch.setattr(hw3.engine.train, "synchronize", clock.taking(1.0, synchronize))
    monkeypatch.setattr(hw3.engine.train, "measure", clock.taking(10.0, measure))
    monkeypatch.setattr(hw3.engine.train, "full_pass", clock.taking(100.0, full_pass))
    phases = ("time/train_pass_s", "time/smoothness_s", "time/eval_s")
    measured = [tuple(m[k] for k in phases) for m in run(data, epochs=2)]
    assert measured == [(1.0, 10.0, 100.0)] * 2  # f(w) came from the measurement
    unmeasured = [tuple(m[k] for k in phases) for m in run(data, epochs=2, measure=None)]
    assert unmeasured == [(1.0, 0.0, 200.0)] * 2  # f(w) by a pass over the training split


def test_divergence_names_pass_and_step(data: FashionMNIST):
    with pytest.raises(Diverged) as excinfo:
        run(data, model="plain", lr=1e12, momentum=0.0, weight_decay=0.0, measure=None)
    losses, _ = reference_training(data, lr=1e12, epochs=1, batch_size=32, seed=0)
    first_bad = next(i for i, loss in enumerate(losses[0], start=1) if not math.isfinite(loss))
    assert first_bad > 1  # the first step's loss is finite: the step is counted, not assumed
    err = excinfo.value
    assert (err.epoch, err.step) == (1, first_bad)
    message = str(err)
    assert f"pass 1, step {first_bad} (lr=1000000000000.0); lower optimizer.lr" in message
    assert "\n" not in message


def test_divergence_in_a_pass_s_last_update_is_caught_at_that_pass(data: FashionMNIST):
    # One step per pass: its loss is finite (the initial weights), the update it makes is not.
    batch = len(data.train)
    with pytest.raises(Diverged) as excinfo:
        run(data, model="plain", lr=math.inf, momentum=0.0, batch_size=batch, measure=None)
    err = excinfo.value
    assert (err.epoch, err.step) == (1, 1)
    assert str(err).startswith("training diverged: non-finite weights at pass 1, step 1")


@pytest.mark.parametrize("model", MODELS)
def test_measuring_does_not_change_training(data: FashionMNIST, model: str):
    measured = run(data, model=model, epochs=3, measure=L_HAT)
    unmeasured = run(data, model=model, epochs=3, measure=None)
    for a, b in zip(measured, unmeasured, strict=True):
        assert {k: a[k] for k in FIT_KEYS} == {k: b[k] for k in FIT_KEYS}


@pytest.mark.parametrize("model", ["bn", "bn_noisy"])  # bn_noisy: its noise stream resumes too
def test_resume_after_interruption(data: FashionMNIST, tmp_path: Path, model: str):
    straight = run(data, model=model, epochs=3)
    checkpoint = tmp_path / "ckpt" / "run.pt"
    seen: list[tuple[int, Metrics]] = []

    def interrupt_after_first(epoch: int, metrics: Metrics) -> None:
        seen.append((epoch, metrics))
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(data, model=model, epochs=3, checkpoint=checkpoint, on_pass_end=interrupt_after_first)
    assert checkpoint.is_file()
    assert [e for e, _ in seen] == [1]

    replayed: list[tuple[int, Metrics]] = []
    resumed = run(
        data,
        model=model,
        epochs=3,
        checkpoint=checkpoint,
        on_pass_end=lambda e, m: replayed.append((e, m)),
    )
    assert [e for e, _ in replayed] == [1, 2, 3]
    assert replayed[0][1] == seen[0][1]  # the finished pass is replayed as it was logged
    assert [m for _, m in replayed] == resumed
    assert untimed(resumed) == untimed(straight)

    # A finished run only replays.
    again: list[int] = []
    replay = run(
        data, model=model, epochs=3, checkpoint=checkpoint, on_pass_end=lambda e, m: again.append(e)
    )
    assert replay == resumed and again == [1, 2, 3]


# Several directions, a step-size profile and λ_max: every random stream of a run in use.
LANDSCAPE = Measurement(
    directions=3,
    scales=(0.5, 1.0, 2.0),
    sharpness=True,
    sharpness_examples=64,
    sharpness_iters=4,
    sharpness_tol=0.0,
)


def test_the_landscape_is_logged_when_asked_for(data: FashionMNIST):
    (metrics,) = run(data, epochs=1, measure=LANDSCAPE)
    spread = {"smoothness/L_std", "smoothness/L_min", "smoothness/L_max"}
    assert set(metrics) == BASE_METRICS | SMOOTHNESS_METRICS | spread | {"smoothness/sharpness"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["smoothness/L_min"] <= metrics["smoothness/L"] <= metrics["smoothness/L_max"]
    assert metrics["smoothness/sharpness"] > 0


@pytest.mark.slow  # over 2 s on two cores
@pytest.mark.parametrize("model", MODELS)
def test_measuring_the_landscape_does_not_change_training(data: FashionMNIST, model: str):
    measured = run(data, model=model, epochs=2, measure=LANDSCAPE)
    unmeasured = run(data, model=model, epochs=2, measure=None)
    for a, b in zip(measured, unmeasured, strict=True):
        assert {k: a[k] for k in FIT_KEYS} == {k: b[k] for k in FIT_KEYS}


@pytest.mark.slow  # over 2 s on two cores
def test_direction_one_is_the_single_direction_at_every_pass(data, monkeypatch):
    first_directions: dict[int, list[float]] = {1: [], 3: []}

    def spy(*args, **kwargs):
        result = measure(*args, **kwargs)
        first_directions[len(args[3])].append(result.directions[0].L)
        return result

    monkeypatch.setattr(hw3.engine.train, "measure", spy)
    single = run(data, epochs=3)
    run(data, epochs=3, measure=LANDSCAPE)
    assert first_directions[1] == [m["smoothness/L"] for m in single]
    assert first_directions[3] == first_directions[1]


@pytest.mark.slow  # over 2 s on two cores
def test_a_resumed_landscape_run_equals_an_uninterrupted_one(data: FashionMNIST, tmp_path):
    straight = run(data, epochs=3, measure=LANDSCAPE)

    def interrupt_after_second(epoch: int, metrics: Metrics) -> None:
        if epoch == 2:
            raise Interrupt

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        run(
            data,
            epochs=3,
            measure=LANDSCAPE,
            checkpoint=checkpoint,
            on_pass_end=interrupt_after_second,
        )
    resumed = run(data, epochs=3, measure=LANDSCAPE, checkpoint=checkpoint)
    assert untimed(resumed) == untimed(straight)


def test_resume_extends_a_finished_run(data: FashionMNIST, tmp_path: Path):
    checkpoint = tmp_path / "run.pt"
    run(data, epochs=1, checkpoint=checkpoint)
    extended = run(data, epochs=2, checkpoint=checkpoint)
    assert untimed(extended) == untimed(run(data, epochs=2))


def reference_training(
    data: FashionMNIST, *, lr: float, epochs: int, batch_size: int, seed: int
) -> tuple[list[list[float]], list[float]]:
    """Plain SGD written out: every step's minibatch loss and the test loss, pass by pass."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init"))
        net = build_model("plain")
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
    x, y = data.train.x, data.train.y
    losses, test = [], []
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=shuffle)
        losses.append([])
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            losses[-1].append(loss.item())
        net.eval()
        test.append(full_pass(net, data.test.x, data.test.y, chunk_size=1000).loss)
        net.train()
    return losses, test


def test_partial_last_batch(data: FashionMNIST):
    """256 examples in batches of 100: steps of 100, 100 and 56, every example once a pass."""
    history = run(data, model="plain", lr=0.05, momentum=0.0, weight_decay=0.0, batch_size=100)
    losses, test = reference_training(data, lr=0.05, epochs=2, batch_size=100, seed=0)
    running = [sum(steps) / len(steps) for steps in losses]
    assert [m["train/loss_running"] for m in history] == pytest.approx(running, rel=1e-5)
    assert [m["test/loss"] for m in history] == pytest.approx(test, rel=1e-5)


def test_batch_larger_than_training_set(data: FashionMNIST):
    small = FashionMNIST(
        train=Split(data.train.x[:20], data.train.y[:20]), test=data.test, mean=0.0, std=1.0
    )
    history = run(small, batch_size=32)
    assert all(math.isfinite(m["smoothness/L"]) for m in history)


# --- the real data, when this machine has it ----------------------------------------------------


# The tests of `real` go to one xdist worker (scripts/test's --dist loadgroup): it loads once.
ON_REAL = pytest.mark.xdist_group("real_fashion_mnist")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> FashionMNIST:
    """The whole official dataset, MD5-verified, loaded once."""
    location = real_data_location(tmp_path_factory.mktemp("real"))
    if location is None:
        without_real_data(f"FashionMNIST not in {SYSTEM_DIR} nor {PROJECT_DATA}")
    root, system_dir = location
    try:
        return load_fashion_mnist(
            root, normalize=True, mean=None, std=None, train_size=None, test_size=None,
            download=False, system_dir=system_dir, checksums=OFFICIAL_MD5,
        )  # fmt: skip
    finally:
        if system_dir is not None:
            shutil.rmtree(raw_dir(root))  # the decompressed copy (55 MB) is in memory now


@ON_REAL
def test_real_data_split_and_normalisation(real: FashionMNIST):
    assert (len(real.train), len(real.test)) == (60_000, 10_000)
    assert real.train.x.shape == (60_000, 1, 28, 28)
    assert real.mean == pytest.approx(0.2860, abs=1e-4)
    assert real.std == pytest.approx(0.3530, abs=1e-4)
    assert sorted(torch.bincount(real.test.y).tolist()) == [1000] * 10


@ON_REAL
@pytest.mark.slow  # over 2 s on two cores
def test_one_pass_on_real_data_beats_chance(real: FashionMNIST):
    subset = FashionMNIST(
        train=Split(real.train.x[:2000], real.train.y[:2000]),  # = data.train_size=2000
        test=Split(real.test.x[:2000], real.test.y[:2000]),
        mean=real.mean,
        std=real.std,
    )
    (metrics,) = run(subset, model="plain", lr=0.04, momentum=0.0, weight_decay=0.0, epochs=1)
    assert metrics["test/acc"] > 0.5
    assert math.isfinite(metrics["smoothness/L"]) and metrics["smoothness/L"] > 0


def test_deterministic_kernels_change_no_bit_on_cpu(data: FashionMNIST):
    assert untimed(run(data, deterministic=True)) == untimed(run(data, deterministic=False))
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
