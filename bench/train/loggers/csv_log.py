"""``csv``: ``history.csv`` and ``validation.csv`` beside ``record.json``, one row per log window
and per validation, rewritten atomically at each checkpoint (a column per logged term)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bench.train.loggers import RunLogger, register_logger


def _table(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@register_logger("csv")
class CSVLogger(RunLogger):
    def __init__(self, run_dir: Path, cfg: Any, start_step: int = 0):
        super().__init__(run_dir, cfg, start_step)
        self.history = self._read("history.csv")
        self.valid = self._read("validation.csv")

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.run_dir / name
        if not path.is_file():
            return []
        with open(path, newline="") as fh:
            rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
        return [
            r for r in rows if int(float(r.get("step", 0))) <= self.start_step
        ]  # resumed: drop what follows

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.history.append({"step": step, **values})

    def validation(self, step: int, result: dict[str, Any]) -> None:
        self.valid.append({"step": step, **{k: v for k, v in result.items() if k != "step"}})

    def rollback(self, from_step: int, to_step: int) -> None:
        self.history = [r for r in self.history if int(float(r["step"])) <= to_step]
        self.valid = [r for r in self.valid if int(float(r["step"])) <= to_step]

    def images(self, step: int, files: dict[str, Path]) -> None:
        self._write()  # called at each checkpoint

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        from bench.core.io import write_text

        if self.history:
            write_text(self.run_dir / "history.csv", _table(self.history))
        if self.valid:
            write_text(self.run_dir / "validation.csv", _table(self.valid))
