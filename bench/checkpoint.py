"""Checkpoints: everything a run needs to continue exactly where it stopped.

``checkpoints/last.pt`` is always the newest *good* checkpoint (written atomically, only after
the divergence guard has passed); periodic copies ``step-XXXXXXXX.pt`` are kept as well.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError
from bench.io import torch_save

FORMAT = 1


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    torch_save({"format": FORMAT, **payload, "rng": rng_state()}, path)


def load(path: Path, expect_digest: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"checkpoint {path} is missing; the run cannot be resumed (start a new run)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BenchError(
            f"checkpoint {path} is corrupt ({type(exc).__name__}); resume from an earlier one with "
            f"--checkpoint {path.parent}/step-*.pt or start a new run"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise BenchError(f"checkpoint {path} is not a trilemma-bench checkpoint (format {FORMAT})")
    if expect_digest is not None and ckpt.get("config_digest") != expect_digest:
        raise BenchError(
            f"checkpoint {path} belongs to a different configuration ({ckpt.get('config_digest')} != "
            f"{expect_digest}); resume it with the run it came from"
        )
    return ckpt


def prune(ckpt_dir: Path, keep: int) -> None:
    periodic = sorted(Path(ckpt_dir).glob("step-*.pt"))
    for p in periodic[: max(0, len(periodic) - keep)]:
        p.unlink(missing_ok=True)
