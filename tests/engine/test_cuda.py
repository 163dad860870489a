"""On a CUDA GPU (skipped elsewhere; benchmarks/gpu_check.sh runs it): with deterministic
kernels, a rerun and the CUDA-graph step against the eager one give the same bits, and runs
trained side by side (each on its own stream, with its own graph) get their solo bits.

Self-contained (torch, PyYAML and hw3.engine only): the GPU machine has neither Hydra nor
MLflow, so gpu_check.sh runs it without conftest.py and tests/support/. With $HW3_CUDA_REPORT
set, the stress check appends what it saw there as a JSON line.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from hw3.engine.choices import MODELS
from hw3.engine.data import FashionMNIST, Split
from hw3.engine.step import own_streams
from hw3.engine.train import Measurement, Member, Metrics, Settings, train_group

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
LANDSCAPE = Measurement(
    directions=2,
    scales=(0.5, 1.0),
    sharpness=True,
    sharpness_examples=256,
    sharpness_iters=5,
    sharpness_tol=0.0,
)
L_HAT = Measurement(
    directions=1,
    scales=(1.0,),
    sharpness=False,
    sharpness_examples=None,
    sharpness_iters=1,
    sharpness_tol=0.0,
)
STRESS_REPLAYS = 10_000


def model_params(name: str) -> dict:
    """The parameters conf/model/NAME.yaml gives the variant."""
    config = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    return {k: v for k, v in config.items() if k not in ("defaults", "name")}


def noise(n: int, g: torch.Generator) -> Split:
    """`n` standard-normal images with uniform labels."""
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def untimed(history: list[Metrics]) -> list[Metrics]:
    """The history without the wall-clock `time/*` metrics."""
    return [{k: v for k, v in m.items() if not k.startswith("time/")} for m in history]


def settings(model: str, **changes: object) -> Settings:
    """One run's settings, small but with optimizer state (momentum, weight decay)."""
    base = Settings(
        model=model,
        lr=0.04,
        momentum=0.9,
        weight_decay=1e-4,
        epochs=3,
        batch_size=32,
        seed=0,
        measure=LANDSCAPE,
        chunk_size=1000,
        cuda_graphs=True,
        model_params=model_params(model),
    )
    return replace(base, **changes)


def alone(data: FashionMNIST, s: Settings, *, deterministic: bool = True) -> list[Metrics]:
    """The run trained by itself."""
    (history,) = train_group(data, [Member(s)], device="cuda", deterministic=deterministic)
    return untimed(history)


@pytest.fixture(scope="module")
def data() -> FashionMNIST:
    """2065 examples: 64 full batches and a partial one (graph and eager steps)."""
    g = torch.Generator().manual_seed(0)
    return FashionMNIST(train=noise(2048 + 17, g), test=noise(512, g), mean=0.0, std=1.0)


@pytest.mark.parametrize("model", MODELS)
def test_graph_and_eager_steps_and_reruns_give_the_same_bits(data: FashionMNIST, model: str):
    graph = alone(data, settings(model))
    assert alone(data, settings(model)) == graph
    assert alone(data, settings(model, cuda_graphs=False)) == graph


def test_ten_members_side_by_side_each_get_the_bits_of_their_run_alone(data: FashionMNIST):
    runs = [settings("plain", seed=seed, measure=L_HAT) for seed in range(10)]
    together = train_group(data, [Member(s) for s in runs], device="cuda", deterministic=True)
    for s, history in zip(runs, together, strict=True):
        assert untimed(history) == alone(data, s), s.seed


def test_members_of_different_variants_side_by_side_get_their_solo_bits(data: FashionMNIST):
    runs = [
        settings("plain", measure=None),
        settings("bn", seed=1, lr=0.1, measure=None),
        settings("gn", seed=2, measure=None),
        settings("bn_noisy", seed=3, measure=None),
    ]
    together = train_group(data, [Member(s) for s in runs], device="cuda", deterministic=True)
    for s, history in zip(runs, together, strict=True):
        assert untimed(history) == alone(data, s), s.model


def _replayed_side_by_side(dedicated: bool) -> int:
    """Two graphs of the Linear layer's forward and backward GEMMs (batch 32, 1568 → 10), each
    with its own inputs, replayed in turn on two streams; how many replays differed from the
    eager results in any bit. Captured each on its own stream, or both on torch.cuda.graph's
    one default capture stream."""
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    members = []
    with own_streams(2, device) as (first, second):
        for stream in (first, second):
            x = torch.randn(32, 1568, device=device, generator=g)
            w = torch.randn(10, 1568, device=device, generator=g, requires_grad=True)
            grad_out = torch.randn(32, 10, device=device, generator=g)

            def gemms(x=x, w=w, grad_out=grad_out) -> torch.Tensor:
                out = F.linear(x, w)
                grad_w = grad_out.t() @ x  # the weight gradient's GEMM
                return torch.cat([out.flatten(), grad_w.flatten()])

            with torch.no_grad():
                eager = gemms()
            graph = torch.cuda.CUDAGraph()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.no_grad(), torch.cuda.stream(stream):
                gemms()  # warm-up: cuBLAS picks its kernels and workspace on this stream
            capture_on = stream if dedicated else None
            with torch.no_grad(), torch.cuda.graph(graph, stream=capture_on):
                result = gemms()
            members.append((stream, graph, result, eager, torch.zeros((), device=device)))
        torch.cuda.synchronize()
        for _ in range(STRESS_REPLAYS):
            for stream, graph, result, eager, wrong in members:
                with torch.cuda.stream(stream):
                    graph.replay()
                    wrong.add_((result != eager).any().int())
        torch.cuda.synchronize()
        return sum(int(wrong) for *_, wrong in members)


def test_graphs_replayed_side_by_side_agree_with_eager_only_when_captured_apart():
    from hw3.engine.device import deterministic_kernels, ieee_fp32

    with ieee_fp32(), deterministic_kernels(True):
        shared, dedicated = _replayed_side_by_side(False), _replayed_side_by_side(True)
    seen = {
        "check": "graph_stress",
        "replays": 2 * STRESS_REPLAYS,
        "wrong_when_captured_on_the_shared_stream": shared,
        "wrong_when_captured_on_dedicated_streams": dedicated,
    }
    if report := os.environ.get("HW3_CUDA_REPORT"):
        with open(report, "a") as f:
            f.write(json.dumps(seen) + "\n")
    assert dedicated == 0, seen
