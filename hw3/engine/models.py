"""The ConvNets: plain (max-pool), bn (max-pool + BatchNorm), stride (strided convs), and the
normalisation variants bn_noisy (BatchNorm + Santurkar et al.'s noise) and gn (GroupNorm).

Every variant is a builder here, registered in BUILDERS under its name in hw3.engine.choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import pairwise

import torch
from torch import nn

from hw3.engine.choices import CHANNELS, MODELS
from hw3.engine.pooling import MaxPool2d

INPUT_SHAPE = (1, 28, 28)  # one FashionMNIST image: channels, height, width
KERNEL, PADDING, POOL = 5, 2, 2
NUM_CLASSES = 10
Norm = Callable[[int], list[nn.Module]]  # channels → the layers that end each pooled block


class BatchNoise(nn.Module):
    """Santurkar et al. (2018, Sec. 2.1 and App. A, Algorithm 1)'s noise after a BatchNorm layer.

    In train mode, at every forward pass (every SGD step), each channel j draws the parameters of
    its noise, μ_j ~ U(−noise_mean, noise_mean) and σ_j ~ U(1, noise_scale); then every
    activation a of every example and position gets its own draws, m ~ U(μ_j ± mean_jitter)
    and s ~ N(σ_j, scale_jitter²), and becomes s·a + m: i.i.d. noise of non-zero mean and
    non-unit variance whose distribution changes at every step. In eval mode it is the identity.
    Draws come from `generator`, a random stream of the run's (set by `draw_noise_from`).
    """

    def __init__(
        self, noise_mean: float, noise_scale: float, mean_jitter: float, scale_jitter: float
    ) -> None:
        super().__init__()
        self.noise_mean, self.noise_scale = noise_mean, noise_scale
        self.mean_jitter, self.scale_jitter = mean_jitter, scale_jitter
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W) with noise in train mode, x itself in eval mode."""
        if not self.training:
            return x
        if self.generator is None:
            raise RuntimeError("BatchNoise in train mode needs a random stream: draw_noise_from")
        g, n, c = self.generator, x.shape[0], x.shape[1]
        unit = (1, c) + (1,) * (x.dim() - 2)  # one value per channel, broadcast over the rest
        mu = (2 * torch.rand(c, generator=g) - 1).mul_(self.noise_mean).view(unit)
        sigma = (1 + torch.rand(c, generator=g).mul_(self.noise_scale - 1)).view(unit)
        shape = (n, *x.shape[1:])
        shift = mu + (2 * torch.rand(shape, generator=g) - 1).mul_(self.mean_jitter)
        scale = sigma + torch.randn(shape, generator=g).mul_(self.scale_jitter)
        return x * scale.to(x.device) + shift.to(x.device)


def noise_layers(net: nn.Module) -> list[BatchNoise]:
    """The network's noise layers (none but in bn_noisy)."""
    return [m for m in net.modules() if isinstance(m, BatchNoise)]


def draw_noise_from(net: nn.Module, generator: torch.Generator | None) -> None:
    """Make every noise layer of `net` draw from `generator` (a CPU generator)."""
    for layer in noise_layers(net):
        layer.generator = generator


@contextmanager
def noise_drawn_from(net: nn.Module, generator: torch.Generator) -> Iterator[None]:
    """Draw the noise from `generator` inside the block, then from the stream drawn from before."""
    saved = [layer.generator for layer in noise_layers(net)]
    draw_noise_from(net, generator)
    try:
        yield
    finally:
        for layer, previous in zip(noise_layers(net), saved, strict=True):
            layer.generator = previous


def _block(c_in: int, c_out: int, *, pool: bool, norm: Norm | None, stride: int = 1) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, KERNEL, stride, PADDING), nn.ReLU()]
    if pool:
        layers.append(MaxPool2d(POOL))
    if norm is not None:
        layers += norm(c_out)
    return nn.Sequential(*layers)


def _shapes(blocks: nn.Sequential) -> list[torch.Size]:
    """Per-example shapes entering each block and, last, entering the linear layer."""
    x = torch.zeros(1, *INPUT_SHAPE)
    shapes = [x.shape[1:]]
    was_training = blocks.training
    blocks.eval()  # in train mode the probe would update BatchNorm's running statistics
    try:
        with torch.no_grad():
            for block in blocks:
                x = block(x)
                shapes.append(x.shape[1:])
    finally:
        blocks.train(was_training)
    return shapes


def _net(blocks: nn.Sequential) -> nn.Sequential:
    """Append the classifier, its input size S found by a dummy forward pass."""
    features = _shapes(blocks)[-1].numel()
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(features, NUM_CLASSES))


def _pooled_blocks(norm: Norm | None) -> nn.Sequential:
    """Conv-ReLU-MaxPool twice, each followed by `norm` if given."""
    c_ins = (INPUT_SHAPE[0], *CHANNELS[:-1])
    return nn.Sequential(
        *(_block(i, o, pool=True, norm=norm) for i, o in zip(c_ins, CHANNELS, strict=True))
    )


def _strided_blocks() -> nn.Sequential:
    """Each conv strided by the factor its pooled counterpart downsamples by, then checked."""
    with torch.random.fork_rng(devices=[]):  # the probe net must not consume init randomness
        pooled = _shapes(_pooled_blocks(norm=None))
    c_ins = (INPUT_SHAPE[0], *CHANNELS[:-1])
    strides = [a[-1] // b[-1] for a, b in pairwise(pooled)]
    blocks = nn.Sequential(
        *(
            _block(i, o, pool=False, norm=None, stride=s)
            for i, o, s in zip(c_ins, CHANNELS, strides, strict=True)
        )
    )
    strided = _shapes(blocks)
    if strided != pooled:
        raise AssertionError(f"stride net shapes {strided} differ from plain's {pooled}")
    return blocks


def plain() -> nn.Module:
    """Conv-ReLU-MaxPool ×2 → Linear."""
    return _net(_pooled_blocks(norm=None))


def bn() -> nn.Module:
    """plain with BatchNorm2d after each MaxPool."""
    return _net(_pooled_blocks(norm=lambda channels: [nn.BatchNorm2d(channels)]))


def stride() -> nn.Module:
    """plain without pools, each conv strided so that the shapes stay plain's."""
    return _net(_strided_blocks())


def bn_noisy(
    noise_mean: float, noise_scale: float, mean_jitter: float, scale_jitter: float
) -> nn.Module:
    """bn with BatchNoise after each BatchNorm2d."""

    def noisy_bn(channels: int) -> list[nn.Module]:
        noise = BatchNoise(noise_mean, noise_scale, mean_jitter, scale_jitter)
        return [nn.BatchNorm2d(channels), noise]

    return _net(_pooled_blocks(norm=noisy_bn))


def gn(groups: int) -> nn.Module:
    """plain with GroupNorm (`groups` groups, per example: no batch statistics) after each pool."""
    return _net(_pooled_blocks(norm=lambda channels: [nn.GroupNorm(groups, channels)]))


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "plain": plain,
    "bn": bn,
    "stride": stride,
    "bn_noisy": bn_noisy,
    "gn": gn,
}


def build_model(name: str, **params: float) -> nn.Module:
    """A fresh network of variant `name` with its `params` (initialised from torch's global RNG)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return BUILDERS[name](**params)
