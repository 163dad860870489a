"""hydra/launcher=batched: a sweep's compatible jobs trained together in one process."""
