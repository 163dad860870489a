"""Hydra and MLflow on top of the engine: config schema, store, jobs, sweeps, CLI errors."""

import os

# MLflow's telemetry thread, failing to reach its config server (offline), unsets an environment
# variable while `requests` iterates os.environ, and the tracking-server call in flight then fails
# with KeyError. So telemetry is off in hw3 unless asked for (MLFLOW_DISABLE_TELEMETRY=false),
# set here, before any module of this package imports MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
