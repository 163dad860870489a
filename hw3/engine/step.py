"""One SGD step on device-resident data, eager or replayed from a CUDA graph, on a stream of its
own."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from hw3.engine.models import noise_layers

GRAPH_WARMUP_STEPS = 3  # eager steps (real ones) before capture, as CUDA graphs require

# CUDA streams that hw3 created itself and that no one else is handed, by device; a group of
# runs borrows them and gives them back, so the next group reuses them (each stream gets its own
# cuBLAS workspace, which PyTorch never frees).
_OWN_STREAMS: dict[torch.device, list[torch.cuda.Stream]] = {}


def _new_stream(device: torch.device) -> torch.cuda.Stream:
    """A new CUDA stream, by cudaStreamCreate: not one of PyTorch's pooled streams."""
    handle = ctypes.c_void_p(0)
    with torch.cuda.device(device):
        err = torch.cuda.cudart().cudaStreamCreate(ctypes.addressof(handle))
    if int(err) != 0 or not handle.value:
        raise RuntimeError(f"cudaStreamCreate failed on {device} (CUDA error {int(err)})")
    return torch.cuda.ExternalStream(handle.value, device=device)


@contextmanager
def own_streams(n: int, device: torch.device) -> Iterator[list[torch.cuda.Stream | None]]:
    """`n` distinct CUDA streams for the block, one per run, none shared with anything else
    (n Nones on CPU).

    Why not torch.cuda.Stream(): it hands out streams from a pool of 32 per device that wraps
    around, so ten runs' streams (and torch.cuda.graph's one class-wide capture stream) can be
    the same stream. cuBLAS keeps one workspace per (handle, stream), and a CUDA graph embeds
    the workspace of the stream it was captured on: graphs captured on a shared stream and then
    replayed side by side would write their GEMMs' partial sums (split-K) into the same memory.
    Each run warms up, captures and replays on its own stream here, so no two runs' graphs share
    a workspace or a stream.
    """
    if device.type != "cuda":
        yield [None] * n
        return
    free = _OWN_STREAMS.setdefault(device, [])
    while len(free) < n:
        free.append(_new_stream(device))
    lent, free[:] = free[:n], free[n:]
    try:
        yield list(lent)
    finally:
        torch.cuda.synchronize(device)  # nothing of this block may still run on them
        free.extend(lent)


class TrainStep:
    """SGD steps on minibatches picked by index from resident (x, y), on `stream` (CUDA).

    Loss statistics accumulate on the device, so a pass never waits for the host: the sum
    of minibatch losses, the number of steps and the first step whose loss was not finite.
    With `graphs` (CUDA only), full-size steps are captured once, on `stream`, and replayed; not
    for a network that draws noise, whose draws a graph would freeze.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        graphs: bool,
        stream: torch.cuda.Stream | None,
    ) -> None:
        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.batch_size, self.stream = batch_size, stream
        device = x.device
        self.loss_sum = torch.zeros((), device=device)
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.graphs = graphs and stream is not None and not noise_layers(model)
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
        """Take one step on the examples `idx` (a device tensor of indices); on CUDA the caller
        has made `stream` current."""
        if not self.graphs or len(idx) != self.batch_size:
            # After capture the grads live in the graph's pool: zero them, never free them.
            self.optimizer.zero_grad(set_to_none=self._graph is None)
            self._step(idx)
            return
        self._idx.copy_(idx)
        if self._graph is not None:
            self._graph.replay()
        elif self._eager_full_steps < GRAPH_WARMUP_STEPS:
            # Warm-up on the run's own stream, as the capture will be (not on the legacy one).
            self.optimizer.zero_grad(set_to_none=True)
            self._step(self._idx)
            self._eager_full_steps += 1
        else:
            self._capture()
            self._graph.replay()

    def _capture(self) -> None:
        """Record one step on the run's own stream (capture runs nothing); grads get allocated
        in the graph's pool."""
        self.optimizer.zero_grad(set_to_none=True)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, stream=self.stream):
            self._step(self._idx)
