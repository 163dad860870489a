"""Entry point: an experiment's MLflow runs → figures, summary, report (see conf/analyze.yaml)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from hw3.analysis import config
from hw3.tracking.cli import fail, main_with_one_line_errors
from hw3.tracking.schema import register, resolve_path

register()
config.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Regenerate the figures and the report of one experiment from the store."""
    # Imported here: --help and --cfg job need neither MLflow nor pandas nor matplotlib.
    from hw3.analysis import job as analysis_job
    from hw3.analysis.study import AnalysisError
    from hw3.tracking.store import TrackingError

    try:
        analysis_job.analyze(
            cfg.tracking.uri,
            cfg.tracking.experiment,
            resolve_path(cfg.out),
            analysis_job.settings(OmegaConf.to_object(cfg)),
            sweep_id=analysis_job.raw_override(HydraConfig.get().overrides.task, "sweep_id")
            or cfg.sweep_id,
            filter_string=cfg.filter,
        )
    except (AnalysisError, TrackingError) as err:
        fail(str(err))


if __name__ == "__main__":
    main_with_one_line_errors(main)
