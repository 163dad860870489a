"""One SGD step on device-resident data, eager or replayed from a CUDA graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GRAPH_WARMUP_STEPS = 3  # eager steps (real ones) before capture, as CUDA graphs require


class TrainStep:
    """SGD steps on minibatches picked by index from resident (x, y).

    Loss statistics accumulate on the device, so a pass never waits for the host: the sum
    of minibatch losses, the number of steps and the first step whose loss was not finite.
    With `graphs` (CUDA only), full-size steps are captured once and replayed.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        graphs: bool,
    ) -> None:
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.batch_size = batch_size
        device = x.device
        self.loss_sum = torch.zeros((), device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.graphs = graphs and device.type == "cuda"
        self._idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_full_steps = 0

    def reset(self) -> None:
        """Zero the per-pass statistics (in place: a captured graph holds their addresses)."""
        self.loss_sum.zero_()
        self.steps.zero_()
        self.first_bad.fill_(-1)

    def _step(self, idx: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(self.x[idx]), self.y[idx])
        loss.backward()
        self.optimizer.step()
        loss = loss.detach()
        self.loss_sum.add_(loss)
        bad = (self.first_bad < 0) & ~torch.isfinite(loss)
        self.first_bad.copy_(torch.where(bad, self.steps, self.first_bad))
        self.steps.add_(1)

    def __call__(self, idx: torch.Tensor) -> None:
        """Take one step on the examples `idx` (a device tensor of indices)."""
        if not self.graphs or len(idx) != self.batch_size:
            # After capture the grads live in the graph's pool: zero them, never free them.
            self.optimizer.zero_grad(set_to_none=self._graph is None)
            self._step(idx)
            return
        self._idx.copy_(idx)
        if self._graph is not None:
            self._graph.replay()
        elif self._eager_full_steps < GRAPH_WARMUP_STEPS:
            self._warmup_step()
        else:
            self._capture()
            self._graph.replay()

    def _warmup_step(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.optimizer.zero_grad(set_to_none=True)
            self._step(self._idx)
        torch.cuda.current_stream().wait_stream(stream)
        self._eager_full_steps += 1

    def _capture(self) -> None:
        """Record one step (capture runs nothing); grads get allocated in the graph's pool."""
        self.optimizer.zero_grad(set_to_none=True)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._step(self._idx)
