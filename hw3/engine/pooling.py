"""Max pooling with nn.MaxPool2d's results bit for bit, computed faster on CPU."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import _pair


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Forward by the channels-last kernel; backward by the usual kernel, from its indices."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *args: object) -> torch.Tensor:
        out, indices = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), *args
        )
        if ctx.needs_input_grad[0]:
            ctx.args = args
            ctx.save_for_backward(x, indices.contiguous())
        return out.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, indices = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *ctx.args, indices)
        return grad_x, *(None,) * len(ctx.args)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d whose CPU forward pass runs PyTorch's channels-last kernel.

    On CPU the kernel for (N, C, H, W) tensors is scalar and the channels-last one is
    vectorised: pooling forward and backward take 2–3× less time here, layout copies
    included, about 10% of a training pass (benchmarks/pooling.py). Both pick the same
    element of each window (the first maximum, or the last NaN), so outputs, gradients and
    the tensors' layout are exactly nn.MaxPool2d's (tests/test_pooling.py). On other devices,
    for unbatched inputs or with `return_indices`, it is nn.MaxPool2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool `x` (N, C, H, W)."""
        if x.device.type != "cpu" or x.dim() != 4 or self.return_indices:
            return super().forward(x)
        return _ChannelsLastMaxPool.apply(
            x,
            _pair(self.kernel_size),
            _pair(self.stride),
            _pair(self.padding),
            _pair(self.dilation),
            self.ceil_mode,
        )


def with_torch_pooling(model: nn.Module) -> nn.Module:
    """A copy of `model` with nn.MaxPool2d, same settings, in place of each hw3 MaxPool2d."""
    copy = deepcopy(model)
    for parent in copy.modules():
        for name, child in parent.named_children():
            if type(child) is MaxPool2d:
                torch_pool = nn.MaxPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.return_indices,
                    child.ceil_mode,
                )
                setattr(parent, name, torch_pool)
    return copy
