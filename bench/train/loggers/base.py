"""The logger interface and its registry (``train.loggers``; plugins under the entry-point group
``trilemma_bench.loggers``). A logger receives only what the trainer has already read back to
the host, so none adds a device synchronisation inside a step (docs/report.md, "Training curves").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.registry import Registry

LOGGERS: Registry = Registry(
    "logger", group="trilemma_bench.loggers", packages=("bench.train.loggers",)
)


def register_logger(name: str):
    """Class decorator: ``@register_logger("wandb") class WandbLogger(RunLogger): ...``."""
    return LOGGERS.register(name)


class RunLogger:
    """One sink of a run's training curves. Every hook is optional; all run on the main rank only.

    ``start_step`` is the step training starts from: 0 for a new run, the checkpoint's step on a
    resume (a logger that appends should drop what it holds beyond it)."""

    def __init__(self, run_dir: Path, cfg: Any, start_step: int = 0):
        self.run_dir, self.cfg, self.start_step = Path(run_dir), cfg, start_step

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """The averaged logged terms of one log window (plain floats) and the learning rate."""

    def validation(self, step: int, result: dict[str, Any]) -> None:
        """A periodic validation: ``accuracy``, ``loss``, ``n_examples``, ``split``."""

    def images(self, step: int, files: dict[str, Path]) -> None:
        """Image files (PNG) a checkpoint wrote, e.g. the replay buffer's grid."""

    def rollback(self, from_step: int, to_step: int) -> None:
        """Training went back to ``to_step`` (a divergence rollback); later steps are rewritten."""

    def final(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The end-of-run evaluation (``protocol/metric`` -> number) with the run's main settings."""

    def close(self) -> None:
        """Flush and release files; called once, also when training stops early."""
