"""The three ConvNets: plain (max-pool), bn (max-pool + BatchNorm) and stride (strided convs)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from hw3.engine.pooling import MaxPool2d

INPUT_SHAPE = (1, 28, 28)  # one FashionMNIST image: channels, height, width
CHANNELS = (16, 32)  # output channels of the two convolutions
KERNEL, PADDING, POOL = 5, 2, 2
NUM_CLASSES = 10
MODELS = ("plain", "bn", "stride")


def _block(c_in: int, c_out: int, *, pool: bool, bn: bool, stride: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, KERNEL, stride, PADDING), nn.ReLU()]
    if pool:
        layers.append(MaxPool2d(POOL))
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
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


def _pooled_blocks(bn: bool) -> nn.Sequential:
    c_ins = (INPUT_SHAPE[0], *CHANNELS[:-1])
    return nn.Sequential(
        *(_block(i, o, pool=True, bn=bn) for i, o in zip(c_ins, CHANNELS, strict=True))
    )


def _strided_blocks() -> nn.Sequential:
    """Each conv strided by the factor its pooled counterpart downsamples by, then checked."""
    with torch.random.fork_rng(devices=[]):  # the probe net must not consume init randomness
        pooled = _shapes(_pooled_blocks(bn=False))
    c_ins = (INPUT_SHAPE[0], *CHANNELS[:-1])
    strides = [a[-1] // b[-1] for a, b in pairwise(pooled)]
    blocks = nn.Sequential(
        *(
            _block(i, o, pool=False, bn=False, stride=s)
            for i, o, s in zip(c_ins, CHANNELS, strides, strict=True)
        )
    )
    strided = _shapes(blocks)
    if strided != pooled:
        raise AssertionError(f"stride net shapes {strided} differ from plain's {pooled}")
    return blocks


def build_model(name: str) -> nn.Module:
    """Build a fresh `plain`, `bn` or `stride` network (initialised from torch's global RNG)."""
    if name == "plain":
        return _net(_pooled_blocks(bn=False))
    if name == "bn":
        return _net(_pooled_blocks(bn=True))
    if name == "stride":
        return _net(_strided_blocks())
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
