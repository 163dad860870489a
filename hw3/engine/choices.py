"""What a run can be configured with, importable without torch: a config is checked against
these before anything is trained or read (hw3.tracking.schema), and the analysis orders its
models by them.

A model variant is a name here, with the rules of its parameters, and a builder of the same
name in hw3.engine.models (tests/engine/test_models.py keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
CHANNELS = (16, 32)  # output channels of the two convolutions
# GroupNorm's group counts that divide every normalised layer's channels
GROUP_COUNTS = tuple(g for g in range(1, min(CHANNELS) + 1) if all(c % g == 0 for c in CHANNELS))


@dataclass(frozen=True)
class Param:
    """One parameter of a model variant: its type and the values it may take."""

    type: type
    ok: Callable[[Any], bool]
    must: str  # the allowed values, as an error message says them


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values))


_NONNEGATIVE = Param(float, lambda v: v >= 0, ">= 0")

# Each variant's parameters (conf/model/NAME.yaml sets them; they are part of the fingerprint).
VARIANTS: dict[str, dict[str, Param]] = {
    "plain": {},
    "bn": {},
    "stride": {},
    "bn_noisy": {
        "noise_mean": _NONNEGATIVE,
        "noise_scale": Param(float, lambda v: v >= 1, ">= 1"),
        "mean_jitter": _NONNEGATIVE,
        "scale_jitter": _NONNEGATIVE,
    },
    "gn": {
        "groups": Param(int, lambda v: v in GROUP_COUNTS, f"one of {_listed(GROUP_COUNTS)}"),
    },
}
MODELS = tuple(VARIANTS)
