"""Structured-config schema: types come from the dataclasses, ranges from `validate`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from hw3.engine.choices import DEVICES, MODELS, VARIANTS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Keys that say where things live or how a launch behaves, and keys that change only how fast
# (or on which device) the same computation runs. Neither is part of what a run computes: both
# stay out of the fingerprint and the params (they are logged as tags, which a resumed run may
# change). Every other key defines the experiment.
WHERE_KEYS = ("tracking.uri", "tracking.experiment", "tracking.heartbeat_s")
WHERE_KEYS += ("tracking.stale_after_s", "force", "data.root", "data.download", "data.verify")
WHERE_KEYS += ("trainer.checkpoint_dir",)
HOW_KEYS = ("trainer.device", "trainer.chunk_size", "trainer.cuda_graphs", "trainer.deterministic")
PLACE_KEYS = WHERE_KEYS + HOW_KEYS
ON_DIVERGENCE = ("fail", "stop")


class ConfigError(ValueError):
    """A config value is out of its range."""


@dataclass
class ModelConfig:
    name: str = MISSING


# One schema per model variant with parameters, its fields typed from hw3.engine.choices:
# conf/model/NAME.yaml extends /schema/model/NAME.
MODEL_SCHEMAS = {
    name: make_dataclass(
        f"{name}ModelConfig",
        [(key, param.type, field(default=MISSING)) for key, param in params.items()],
        bases=(ModelConfig,),
    )
    for name, params in VARIANTS.items()
    if params
}


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING


@dataclass
class DataConfig:
    root: str = MISSING
    download: bool = MISSING
    verify: bool = MISSING
    normalize: bool = MISSING
    mean: float | None = MISSING
    std: float | None = MISSING
    train_size: int | None = MISSING
    test_size: int | None = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    device: str = MISSING
    chunk_size: int = MISSING
    cuda_graphs: bool = MISSING
    deterministic: bool = MISSING
    on_divergence: str = MISSING
    checkpoint_dir: str | None = MISSING


@dataclass
class SmoothnessConfig:
    enabled: bool = MISSING
    directions: int = MISSING
    scales: list[float] = MISSING
    sharpness: bool = MISSING
    sharpness_examples: int | None = MISSING
    sharpness_iters: int = MISSING
    sharpness_tol: float = MISSING


@dataclass
class TrackingConfig:
    uri: str | None = MISSING
    experiment: str = MISSING
    heartbeat_s: float = MISSING
    stale_after_s: float = MISSING


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    smoothness: SmoothnessConfig = field(default_factory=SmoothnessConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = MISSING
    force: bool = MISSING


# (dotted key, predicate, what the value must be)
_RANGES = [
    ("model.name", lambda v: v in MODELS, f"one of {', '.join(MODELS)}"),
    ("optimizer.lr", lambda v: v > 0, "> 0"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("data.std", lambda v: v is None or v > 0, "> 0 or null"),
    ("data.train_size", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("data.test_size", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("trainer.epochs", lambda v: v >= 1, ">= 1"),
    ("trainer.batch_size", lambda v: v >= 1, ">= 1"),
    ("trainer.device", lambda v: v in DEVICES, f"one of {', '.join(DEVICES)}"),
    ("trainer.chunk_size", lambda v: v >= 1, ">= 1"),
    ("trainer.on_divergence", lambda v: v in ON_DIVERGENCE, f"one of {', '.join(ON_DIVERGENCE)}"),
    ("smoothness.directions", lambda v: v >= 1, ">= 1"),
    (
        "smoothness.scales",
        lambda v: len(v) > 0 and all(c != 0 and math.isfinite(c) for c in v),
        "a non-empty list of non-zero numbers",
    ),
    ("smoothness.sharpness_examples", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("smoothness.sharpness_iters", lambda v: v >= 1, ">= 1"),
    ("smoothness.sharpness_tol", lambda v: v >= 0, ">= 0"),
    ("tracking.experiment", lambda v: bool(v.strip()), "a non-empty name"),
    ("tracking.heartbeat_s", lambda v: v > 0, "> 0"),
    ("tracking.stale_after_s", lambda v: v > 0, "> 0"),
]
_RANGES += [
    (f"model.{key}", param.ok, param.must)
    for params in VARIANTS.values()
    for key, param in params.items()
]


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: Config) -> Config:
    """Raise ConfigError naming the first out-of-range value and the fix; return `cfg`."""
    for key, ok, must in _RANGES:
        try:
            value = _get(cfg, key)
        except AttributeError:
            continue  # a parameter of another model variant
        if not ok(value):
            raise ConfigError(f"invalid {key}={value!r}: it must be {must} (set {key}=VALUE)")
    return cfg


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass tree as {dotted key: leaf value}."""
    out: dict[str, Any] = {}
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        out |= flatten(value, f"{key}.") if is_dataclass(value) else {key: value}
    return out


def resolve_path(path: str) -> Path:
    """Relative paths in the config are relative to the project root, not Hydra's job dir."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def register() -> None:
    """Register the schema that conf/config.yaml extends and the `${hw3_root:}` resolver."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for name, schema in MODEL_SCHEMAS.items():
        store.store(group="schema/model", name=name, node=schema)
    OmegaConf.register_new_resolver("hw3_root", lambda: str(PROJECT_ROOT), replace=True)
