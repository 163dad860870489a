"""Entry point: one Hydra config → one training run → one MLflow run (see conf/config.yaml)."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from hw3.config import register
from hw3.job import RunFailed, run_job

register()


class JobFailed(CompactHydraException):
    """Reported by Hydra as its one-line message, with a non-zero exit."""


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    try:
        run_job(
            OmegaConf.to_object(cfg),
            overrides=list(hydra_cfg.overrides.task),
            hydra_dir=Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir,
        )
    except RunFailed as err:
        raise JobFailed(str(err)) from None


if __name__ == "__main__":
    main()
