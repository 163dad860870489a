"""Entry point: one Hydra config → one training run → one MLflow run (see conf/config.yaml)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hw3.tracking.cli import fail, main_with_one_line_errors
from hw3.tracking.job import RunFailed, run_job
from hw3.tracking.schema import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Train one configuration into its MLflow run (skipped or resumed as appropriate)."""
    hydra_cfg = HydraConfig.get()
    try:
        run_job(
            OmegaConf.to_object(cfg),
            overrides=list(hydra_cfg.overrides.task),
            hydra_dir=Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir,
        )
    except RunFailed as err:
        fail(str(err))


if __name__ == "__main__":
    main_with_one_line_errors(main)
