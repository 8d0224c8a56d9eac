"""``tensorboard``: event files under ``<run>/tensorboard/`` through torch's ``SummaryWriter``;
what goes where, and the purge on resume and rollback: docs/report.md, "Training curves"."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from bench.train.loggers import RunLogger, register_logger

GROUPS = {"lr": "optim/lr", "images_per_s": "speed/images_per_s"}


@register_logger("tensorboard")
class TensorBoardLogger(RunLogger):
    def __init__(self, run_dir: Path, cfg: Any, start_step: int = 0):
        super().__init__(run_dir, cfg, start_step)
        self.writer = None
        if importlib.util.find_spec("tensorboard") is None:
            print(
                "note: tensorboard is not installed, so this run logs no event files (pip install tensorboard; "
                "or drop it from train.loggers)",
                file=sys.stderr,
            )
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(self.run_dir / "tensorboard"),
            purge_step=start_step + 1 if start_step > 0 else None,
        )  # keeps step <= start

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if k == "step" or k == "epoch":
                continue
            self.writer.add_scalar(GROUPS.get(k, f"train/{k}"), v, step)
        if "epoch" in values:
            self.writer.add_scalar("progress/epoch", values["epoch"], step)

    def validation(self, step: int, result: dict[str, Any]) -> None:
        if self.writer is None:
            return
        split = result.get("split", "val")
        self.writer.add_scalar(f"{split}/accuracy", result["accuracy"], step)
        if result.get("loss") is not None:
            self.writer.add_scalar(f"{split}/loss", result["loss"], step)

    def images(self, step: int, files: dict[str, Path]) -> None:
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        for name, path in files.items():
            try:
                with Image.open(path) as im:
                    img = np.asarray(im.convert("RGB"))  # H x W x 3 uint8
            except (OSError, ValueError):
                continue
            self.writer.add_image(f"samples/{name}", img, step, dataformats="HWC")
        self.writer.flush()

    def rollback(self, from_step: int, to_step: int) -> None:
        if self.writer is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer.close()  # a new file that purges the diverged steps for the reader
        self.writer = SummaryWriter(
            log_dir=str(self.run_dir / "tensorboard"), purge_step=to_step + 1
        )

    def final(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is None or not metrics:
            return
        clean = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()
        }
        self.writer.add_hparams(
            clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="final"
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
