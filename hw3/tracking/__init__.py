"""Hydra and MLflow on top of the engine: config schema, store, jobs, sweeps, CLI errors."""
