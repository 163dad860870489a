"""Device choice and numeric settings shared by training and measurement."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# cuBLAS reads this when it creates its handle: deterministic matmuls need a fixed workspace.
# Set before any CUDA work; a value the user set wins.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

DEVICES = ("auto", "cpu", "cuda")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_HEAP_BLOCK_LIMIT = 1 << 30  # blocks below this come from (and go back to) the heap
_HEAP_KEEP = 2**31 - 1  # free memory at the heap's top that glibc keeps (the most it allows)


class DeviceError(RuntimeError):
    """The requested device is not available."""


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; `cuda` without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def ieee_fp32() -> Iterator[None]:
    """Turn TF32 off for CUDA matmuls and convolutions inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With `enabled`, only deterministic CUDA kernels inside the block (cuDNN, cuBLAS, ...).

    An operation with no deterministic kernel warns instead of failing (warn_only), so that a
    run never dies of it; benchmarks/gpu_check.sh checks that reruns are bit-identical. On CPU
    hw3's operations are deterministic either way.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def reuse_cpu_memory() -> bool:
    """Make glibc's malloc keep freed blocks up to 1 GiB for reuse; True if it took effect.

    By default glibc unmaps every freed block over 32 MiB, so each large activation of a
    full pass is mapped afresh, page-faulted and zeroed by the kernel: up to half of a CPU
    full-gradient pass (benchmarks/README.md). Results are unchanged; the process's resident
    memory stays near its peak instead. Not glibc (macOS, musl): nothing happens.
    """
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return False
    if not (libc_version or "").startswith("glibc"):
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCK_LIMIT)
        and libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_KEEP)
    )
