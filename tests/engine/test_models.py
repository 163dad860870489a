"""The ConvNets: output shapes, parameter counts, the stride derivation, initialisation, the
normalisation variants (noisy BatchNorm, GroupNorm)."""

from __future__ import annotations

import pytest
import torch
from support.data import model_params
from torch import nn

from hw3.engine.choices import MODELS, VARIANTS
from hw3.engine.models import BUILDERS, BatchNoise, build_model, draw_noise_from

# By hand, from the architecture: conv 5×5 (1→16), conv 5×5 (16→32), linear 32·7·7→10.
CONV1 = 16 * 1 * 5 * 5 + 16
CONV2 = 32 * 16 * 5 * 5 + 32
LINEAR = 32 * 7 * 7 * 10 + 10
NORM_AFFINE = 2 * (16 + 32)  # a scale and a shift per channel, BatchNorm's or GroupNorm's
EXPECTED_PARAMS = {
    "plain": CONV1 + CONV2 + LINEAR,
    "bn": CONV1 + CONV2 + LINEAR + NORM_AFFINE,
    "stride": CONV1 + CONV2 + LINEAR,
    "bn_noisy": CONV1 + CONV2 + LINEAR + NORM_AFFINE,  # the noise has no parameters
    "gn": CONV1 + CONV2 + LINEAR + NORM_AFFINE,
}


def build(name: str) -> nn.Module:
    """Variant `name` with the parameters its conf/model file gives it (its noise, if any,
    drawn from a stream of its own)."""
    net = build_model(name, **model_params(name))
    draw_noise_from(net, torch.Generator().manual_seed(0))
    return net


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
    model = build(name)
    for n in (1, 3):
        assert model(torch.randn(n, 1, 28, 28)).shape == (n, 10)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name: str):
    model = build(name)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    assert all(p.requires_grad for p in model.parameters())


def test_layers_of_each_variant():
    def count(model: nn.Module, kind: type[nn.Module]) -> int:
        return sum(isinstance(m, kind) for m in model.modules())

    kinds = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, BatchNoise, nn.GroupNorm)
    assert {name: [count(build(name), k) for k in kinds] for name in MODELS} == {
        "plain": [2, 2, 0, 0, 0],
        "bn": [2, 2, 2, 0, 0],
        "stride": [2, 0, 0, 0, 0],
        "bn_noisy": [2, 2, 2, 2, 0],
        "gn": [2, 2, 0, 0, 2],
    }
    bn, noisy, gn = build("bn"), build("bn_noisy"), build_model("gn", groups=8)
    assert [m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm2d)] == [16, 32]
    assert [m.num_channels for m in gn.modules() if isinstance(m, nn.GroupNorm)] == [16, 32]
    assert [m.num_groups for m in gn.modules() if isinstance(m, nn.GroupNorm)] == [8, 8]
    # The noise right after each BatchNorm, in the places of bn's BatchNorm layers.
    order = [type(m) for m in noisy.modules() if isinstance(m, nn.BatchNorm2d | BatchNoise)]
    assert order == [nn.BatchNorm2d, BatchNoise] * 2


def test_stride_net_downsamples_like_plain():
    plain, stride = build("plain"), build("stride")
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
    first = build(name).state_dict()
    torch.manual_seed(123)
    second = build(name).state_dict()
    torch.manual_seed(124)
    other = build(name).state_dict()
    assert first.keys() == second.keys() == other.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("name", [m for m in MODELS if m != "plain"])
def test_variants_consume_the_global_rng_like_plain(name: str):
    """Same seed → same conv/linear initial weights, and the same RNG state afterwards."""
    torch.manual_seed(7)
    plain = build("plain")
    after_plain = torch.get_rng_state()
    torch.manual_seed(7)
    other = build(name)
    assert torch.equal(torch.get_rng_state(), after_plain)

    def weights(model: nn.Module) -> list[torch.Tensor]:
        layers = (m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
        return [t for m in layers for t in (m.weight, m.bias)]

    assert all(torch.equal(a, b) for a, b in zip(weights(plain), weights(other), strict=True))


def test_fresh_bn_model_has_pristine_running_statistics():
    model = build("bn")
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


def test_every_variant_has_a_builder_and_a_config_with_its_parameters():
    assert list(BUILDERS) == list(MODELS)
    for name, params in VARIANTS.items():
        values = model_params(name)
        assert values.keys() == params.keys(), name
        assert all(params[key].ok(value) for key, value in values.items()), name


def noise_of(layer: BatchNoise, x: torch.Tensor, seed: int) -> torch.Tensor:
    layer.generator = torch.Generator().manual_seed(seed)
    return layer(x)


def test_noise_is_drawn_afresh_per_step_within_its_bounds():
    layer = BatchNoise(noise_mean=0.5, noise_scale=1.25, mean_jitter=0.1, scale_jitter=0.0)
    zeros, ones = torch.zeros(64, 16, 7, 7), torch.ones(64, 16, 7, 7)
    shift = noise_of(layer, zeros, 0)  # zero activations: only the additive noise m is left
    mu = shift.mean(dim=(0, 2, 3))  # each channel's mean, near its μ_j
    assert mu.abs().max() <= 0.5 + 0.1 and mu.std() > 0.05  # μ_j ~ U(−0.5, 0.5) per channel
    spread = shift.amax(dim=(0, 2, 3)) - shift.amin(dim=(0, 2, 3))
    assert spread.max() <= 0.2 and spread.min() > 0.15  # every activation its own m: U(μ_j ± 0.1)
    scale = noise_of(layer, ones, 0) - shift  # same draws: s·1 + m − m = s, the scale alone
    sigma = scale.mean(dim=(0, 2, 3))
    assert torch.allclose(scale, sigma.view(1, 16, 1, 1).expand_as(scale))  # no jitter: s = σ_j
    assert sigma.min() >= 1 and sigma.max() <= 1.25
    assert not torch.equal(layer(zeros), shift)  # the next step: new μ_j, σ_j, m
    layer.scale_jitter = 0.1
    jittered = noise_of(layer, ones, 0) - noise_of(layer, zeros, 0)
    assert 0.08 < float((jittered - jittered.mean(dim=(0, 2, 3), keepdim=True)).std()) < 0.12


def test_noise_is_on_in_train_mode_only_and_from_its_stream_alone():
    net = build_model("bn_noisy", **model_params("bn_noisy"))
    x = torch.randn(8, 1, 28, 28)
    with pytest.raises(RuntimeError, match="needs a random stream"):
        net(x)
    draw_noise_from(net, torch.Generator().manual_seed(3))
    global_rng = torch.get_rng_state()
    noisy = net(x)
    assert torch.equal(torch.get_rng_state(), global_rng)  # the global RNG is not used
    draw_noise_from(net, torch.Generator().manual_seed(3))
    assert torch.equal(net(x), noisy)  # the same stream, the same draws
    bn = build("bn")
    bn.load_state_dict(net.state_dict())  # the same layout: bn's layers, the noise between
    net.eval()
    bn.eval()
    assert torch.equal(net(x), bn(x))  # in eval mode bn_noisy is bn
