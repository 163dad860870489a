"""analyze.py's typed config: the run config plus what to analyse and where (conf/analyze.yaml).

Light on purpose: analyze.py registers it before Hydra parses the command line, and --help
must not pay for MLflow, pandas or matplotlib (hw3.analysis.job imports those).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from hw3.tracking.schema import Config


@dataclass
class BootstrapConfig:
    """errorbar=bootstrap: how many resamples, drawn with which seed."""

    resamples: int = MISSING
    seed: int = MISSING


@dataclass
class StabilityConfig:
    """Where the stability analysis takes L̂ at a reference learning rate from."""

    reference_experiments: list[str] = MISSING
    reference_lr: float = MISSING


@dataclass
class AnalyzeConfig(Config):
    """The run config plus what to analyse and where to write it (conf/analyze.yaml)."""

    out: str = MISSING
    sweep_id: str | None = MISSING
    filter: str | None = MISSING
    errorbar: str = MISSING
    formats: list[str] = MISSING
    confidence: float = MISSING
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)


def register() -> None:
    """Register the schema that conf/analyze.yaml puts over the run config's."""
    ConfigStore.instance().store(name="analyze_schema", node=AnalyzeConfig)
