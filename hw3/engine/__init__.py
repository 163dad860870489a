"""The experiment in plain PyTorch: data, models, training, measurement (no Hydra, no MLflow)."""
