"""On a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs it): with deterministic
kernels, a rerun and the CUDA-graph step against the eager one give the same bits.

Self-contained (torch and hw3.engine only): the GPU machine has neither Hydra nor MLflow, so
gpu_check.sh runs it without conftest.py and tests/helpers.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hw3.engine.data import FashionMNIST, Split
from hw3.engine.models import MODELS
from hw3.engine.train import Measurement, Member, Metrics, Settings, train, train_group

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def noise(n: int, g: torch.Generator) -> Split:
    """`n` standard-normal images with uniform labels."""
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def history(model: str, *, cuda_graphs: bool, deterministic: bool) -> list[Metrics]:
    """Three passes on 2065 examples (a partial last batch: eager and graph steps), with L̂,
    several directions and λ_max measured."""
    g = torch.Generator().manual_seed(0)
    data = FashionMNIST(train=noise(2048 + 17, g), test=noise(512, g), mean=0.0, std=1.0)
    landscape = Measurement(
        directions=2,
        scales=(0.5, 1.0),
        sharpness=True,
        sharpness_examples=256,
        sharpness_iters=5,
        sharpness_tol=0.0,
    )
    runs = train(
        data,
        model=model,
        lr=0.04,
        momentum=0.9,
        weight_decay=1e-4,
        epochs=3,
        batch_size=32,
        seed=0,
        device="cuda",
        measure=landscape,
        chunk_size=1000,
        cuda_graphs=cuda_graphs,
        deterministic=deterministic,
    )
    return untimed(runs)


def untimed(history: list[Metrics]) -> list[Metrics]:
    """The history without the wall-clock `time/*` metrics."""
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in history]


@pytest.mark.parametrize("model", MODELS)
def test_graph_and_eager_steps_and_reruns_give_the_same_bits(model: str):
    graph = history(model, cuda_graphs=True, deterministic=True)
    assert history(model, cuda_graphs=True, deterministic=True) == graph
    assert history(model, cuda_graphs=False, deterministic=True) == graph


def test_members_trained_side_by_side_get_their_solo_bits():
    g = torch.Generator().manual_seed(1)
    data = FashionMNIST(train=noise(1000, g), test=noise(256, g), mean=0.0, std=1.0)
    base = Settings(
        model="plain",
        lr=0.04,
        momentum=0.0,
        weight_decay=0.0,
        epochs=2,
        batch_size=32,
        seed=0,
        measure=None,
        chunk_size=1000,
        cuda_graphs=True,
    )
    settings = [base, replace(base, seed=1, lr=0.1), replace(base, model="bn", seed=2)]
    together = train_group(data, [Member(s) for s in settings], device="cuda", deterministic=True)
    for s, history in zip(settings, together, strict=True):
        (alone,) = train_group(data, [Member(s)], device="cuda", deterministic=True)
        assert untimed(history) == untimed(alone), s
