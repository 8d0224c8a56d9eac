"""``console``: the progress bar (the trainer's) and a line per validation on the terminal."""

from __future__ import annotations

from typing import Any

from bench.train.loggers import RunLogger, register_logger


@register_logger("console")
class ConsoleLogger(RunLogger):
    shows_progress = True  # the trainer draws its progress bar only when a logger asks for it

    def validation(self, step: int, result: dict[str, Any]) -> None:
        import sys

        from tqdm.auto import tqdm

        tqdm.write(
            f"step {step}: {result['split']} accuracy {result['accuracy']:.4f} (n={result['n_examples']})",
            file=sys.stderr,
        )  # above the progress bar; stdout keeps the results
