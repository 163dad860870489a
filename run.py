"""Entry point: one Hydra config → one training run → one MLflow run (see conf/config.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hw3.tracking.cli import fail, main_with_one_line_errors
from hw3.tracking.schema import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Train one configuration into its MLflow run (skipped or resumed as appropriate)."""
    # Imported here: --help and --cfg job need neither MLflow nor torch.
    from hw3.tracking.job import JobSpec, run_jobs

    (outcome,) = run_jobs([JobSpec.from_hydra(cfg)])
    if outcome.line is not None:
        fail(outcome.line)


if __name__ == "__main__":
    main_with_one_line_errors(main)
