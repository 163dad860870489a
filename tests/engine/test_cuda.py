"""On a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs it): with deterministic
kernels, a rerun and the CUDA-graph step against the eager one give the same bits."""

from __future__ import annotations

import pytest
import torch
from helpers import L_HAT, synthetic_data

from hw3.engine.models import MODELS
from hw3.engine.train import Metrics, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def history(model: str, *, cuda_graphs: bool, deterministic: bool) -> list[Metrics]:
    """Three passes on 2048 synthetic examples (a partial last batch: eager and graph steps)."""
    data = synthetic_data(n_train=2048 + 17, n_test=512, seed=0)
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
        measure=L_HAT,
        chunk_size=1000,
        cuda_graphs=cuda_graphs,
        deterministic=deterministic,
    )
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in runs]


@pytest.mark.parametrize("model", MODELS)
def test_graph_and_eager_steps_and_reruns_give_the_same_bits(model: str):
    graph = history(model, cuda_graphs=True, deterministic=True)
    assert history(model, cuda_graphs=True, deterministic=True) == graph
    assert history(model, cuda_graphs=False, deterministic=True) == graph
