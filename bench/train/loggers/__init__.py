"""Training-curve loggers (``train.loggers``): the interface, its registry (plugins under the
entry-point group ``trilemma_bench.loggers``) and :class:`RunLoggers`, the trainer's hook that fans
each call out to a run's loggers. A logger receives only what the trainer has already read back
to the host, so none adds a device synchronisation (docs/report.md, "Training curves")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.train.hooks import Hook

__all__ = ["LOGGERS", "RunLogger", "RunLoggers", "register_logger", "final_metrics"]


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


class RunLoggers(Hook):
    """The loggers of one run, called together as one of the trainer's hooks; a failing logger
    never stops training."""

    def __init__(self, loggers: list[RunLogger]):
        self.loggers = loggers

    @classmethod
    def create(
        cls, names: list[str] | tuple[str, ...], run_dir: Path, cfg: Any, start_step: int = 0
    ) -> RunLoggers:
        if isinstance(names, str):
            names = [names]
        return cls([LOGGERS.get(name)(run_dir, cfg, start_step) for name in dict.fromkeys(names)])

    @property
    def shows_progress(self) -> bool:
        return any(getattr(lg, "shows_progress", False) for lg in self.loggers)

    def _each(self, hook: str, *args) -> None:
        import sys

        for lg in self.loggers:
            try:
                getattr(lg, hook)(*args)
            except Exception as exc:  # logging must not cost a run
                print(
                    f"warning: logger {type(lg).__name__}.{hook} failed: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                )

    def on_log(self, tr, entry: dict[str, Any], means: dict[str, float]) -> None:
        self._each("scalars", tr.state.step, entry)

    def on_validation(self, tr, result: dict[str, Any]) -> None:
        self._each("validation", tr.state.step, result)

    def on_checkpoint(self, tr, periodic: bool) -> None:
        arts = tr.method.artifacts().items()
        files = {n: tr.run_dir / rel for n, rel in arts if str(rel).endswith(".png")}
        self._each("images", tr.state.step, files)

    def on_rollback(self, tr, from_step: int) -> None:
        self._each("rollback", from_step, tr.state.step)

    def final(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        self._each("final", hparams, metrics)

    def close(self) -> None:
        self._each("close")


def check_logger_names(names: Any) -> None:
    """One line for an unknown logger name (before a run starts)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise BenchError(
            f"train.loggers={names!r} must be a list, e.g. --set 'train.loggers=[console,tensorboard]'"
        )
    for name in names:
        LOGGERS.get(str(name))  # raises: unknown logger 'x'; choose one of: ...


def final_metrics(evaluations: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``protocol/metric`` -> its headline number (accuracy, fid, kid_mean, gap_adv, ...)."""
    out = {}
    for proto, results in (evaluations or {}).items():
        for metric, res in results.items():
            if not isinstance(res, dict):
                continue
            for key in ("accuracy", "fid", "kid_mean", "is_mean", "ece", "gap_adv", "gap_gen"):
                v = res.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{proto}/{metric}" + ("" if key == "accuracy" else f".{key}")] = float(v)
    return out
