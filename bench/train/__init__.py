"""The training layer: the shared loop, checkpoints, DDP, EMA, the second pass (SAM/AWP) and
training-curve loggers (docs/architecture.md)."""
