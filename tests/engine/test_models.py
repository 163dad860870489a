"""The three ConvNets: output shapes, parameter counts, the stride derivation, initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hw3.engine.models import MODELS, build_model

# By hand, from the architecture: conv 5×5 (1→16), conv 5×5 (16→32), linear 32·7·7→10.
CONV1 = 16 * 1 * 5 * 5 + 16
CONV2 = 32 * 16 * 5 * 5 + 32
LINEAR = 32 * 7 * 7 * 10 + 10
BN_AFFINE = 2 * (16 + 32)
EXPECTED_PARAMS = {
    "plain": CONV1 + CONV2 + LINEAR,
    "bn": CONV1 + CONV2 + LINEAR + BN_AFFINE,
    "stride": CONV1 + CONV2 + LINEAR,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs_of(model: nn.Module, kind: type[nn.Module], x: torch.Tensor) -> list[torch.Size]:
    """Per-example shapes entering each `kind` layer of `model` during a forward pass on `x`."""
    shapes: list[torch.Size] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: shapes.append(args[0].shape[1:]))
        for m in model.modules()
        if isinstance(m, kind)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


@pytest.mark.parametrize("name", MODELS)
def test_output_shape(name: str):
    model = build_model(name)
    for n in (1, 3):
        assert model(torch.randn(n, 1, 28, 28)).shape == (n, 10)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name: str):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    assert all(p.requires_grad for p in model.parameters())


def test_layers_of_each_variant():
    def count(model: nn.Module, kind: type[nn.Module]) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    plain, bn, stride = (build_model(name) for name in ("plain", "bn", "stride"))
    assert [count(plain, k) for k in (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d)] == [2, 2, 0]
    assert [count(bn, k) for k in (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d)] == [2, 2, 2]
    assert [count(stride, k) for k in (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d)] == [2, 0, 0]
    assert [m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d)] == [16, 32]


def test_stride_net_downsamples_like_plain():
    plain, stride = build_model("plain"), build_model("stride")
    plain_convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    stride_convs = [m for m in stride.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in plain_convs] == [(1, 1), (1, 1)]
    assert [c.stride for c in stride_convs] == [(2, 2), (2, 2)]
    for p, s in zip(plain_convs, stride_convs, strict=True):
        assert (s.kernel_size, s.padding, s.in_channels, s.out_channels) == (
            p.kernel_size, p.padding, p.in_channels, p.out_channels,
        )  # fmt: skip
    x = torch.randn(2, 1, 28, 28)
    # The shapes entering conv2 and the linear layer are plain's: (16, 14, 14) and 32·7·7.
    assert inputs_of(stride, nn.Conv2d, x) == inputs_of(plain, nn.Conv2d, x)
    assert inputs_of(plain, nn.Conv2d, x)[1] == (16, 14, 14)
    assert inputs_of(stride, nn.Linear, x) == inputs_of(plain, nn.Linear, x) == [(32 * 7 * 7,)]
    linear = [m for m in stride.modules() if isinstance(m, nn.Linear)]
    assert [m.in_features for m in linear] == [32 * 7 * 7]


@pytest.mark.parametrize("name", MODELS)
def test_building_is_deterministic_under_manual_seed(name: str):
    torch.manual_seed(123)
    first = build_model(name).state_dict()
    torch.manual_seed(123)
    second = build_model(name).state_dict()
    torch.manual_seed(124)
    other = build_model(name).state_dict()
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", ["bn", "stride"])
def test_variants_consume_the_global_rng_like_plain(name: str):
    """Same seed → same conv/linear initial weights, and the same RNG state afterwards."""
    torch.manual_seed(7)
    plain = build_model("plain")
    after_plain = torch.get_rng_state()
    torch.manual_seed(7)
    other = build_model(name)
    assert torch.equal(torch.get_rng_state(), after_plain)

    def weights(model: nn.Module) -> list[torch.Tensor]:
        layers = (m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
        return [t for m in layers for t in (m.weight, m.bias)]

    assert all(torch.equal(a, b) for a, b in zip(weights(plain), weights(other), strict=True))


def test_fresh_bn_model_has_pristine_running_statistics():
    model = build_model("bn")
    assert model.training
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.running_mean, torch.zeros(bn.num_features))
        assert torch.equal(bn.running_var, torch.ones(bn.num_features))
        assert int(bn.num_batches_tracked) == 0


@pytest.mark.parametrize("name", ["", "Plain", "resnet", "batchnorm"])
def test_unknown_name_lists_valid_ones(name: str):
    with pytest.raises(ValueError, match="unknown model") as excinfo:
        build_model(name)
    message = str(excinfo.value)
    assert repr(name) in message
    assert all(valid in message for valid in MODELS)
