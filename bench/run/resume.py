"""What a resume may change and where it continues from (`bench run --resume`; README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.config import RunConfig, deep_merge, parse_set, update_dataclass
from bench.core.errors import BenchError
from bench.core.settings import flatten
from bench.run.resolve import finish


@dataclass
class Resume:
    """How a resume continues: from which checkpoint (None: the run has none, so it restarts from
    step 0 in place) and which settings it changed (see :data:`RESUME_OVERRIDABLE`)."""

    checkpoint: Path | None
    overrides: dict[str, Any]


# What `bench run --resume RUN --set ...` may change: how training continues after a divergence
# (learning rate, divergence policy), how often it checkpoints, where its data files are, and how it
# is evaluated. Everything else defines what the weights so far were trained on and stays as recorded.
RESUME_OVERRIDABLE = (
    "optim.lr",
    "train.on_divergence",
    "train.max_rollbacks",
    "train.rollback_lr_factor",
    "train.divergence_bound",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.loggers",
    "data.data_dir",
    "eval.",
)


def _overridable(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_OVERRIDABLE)


def resume_overrides(
    cfg: RunConfig, overrides: list[str] | tuple[str, ...]
) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with the ``--set`` items of a resume applied, and what they changed
    (``{"optim.lr": {"from": 0.1, "to": 0.01}}``). Only :data:`RESUME_OVERRIDABLE` settings may change."""
    cli: dict[str, Any] = {}
    for item in overrides:
        cli = deep_merge(cli, parse_set(item))
    keys = list(flatten(cli))
    refused = [k for k in keys if not _overridable(k)]
    if refused:
        allowed = ", ".join(s + "*" if s.endswith(".") else s for s in RESUME_OVERRIDABLE)
        raise BenchError(
            f"--resume cannot change {', '.join(refused)} (the weights so far were trained with the "
            f"recorded value); on resume only {allowed} may change; start a new run for the rest"
        )
    new = finish(update_dataclass(cfg, cli))
    before, after = flatten(cfg.to_dict()), flatten(new.to_dict())
    return new, {
        k: {"from": before.get(k), "to": after.get(k)}
        for k in keys
        if before.get(k) != after.get(k)
    }


def resume_point(run_dir: Path, checkpoint_path: str | None) -> Path | None:
    """The checkpoint a resume continues from: the one given, else ``last.pt``; None when the run
    stopped before writing any (it then trains from step 0 in place, exactly as a new run would)."""
    if checkpoint_path:
        return Path(checkpoint_path)  # must exist: loading it says so otherwise
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.is_file():
        return last
    periodic = sorted(ckpt_dir.glob("step-*.pt"))
    if periodic:
        raise BenchError(
            f"checkpoint {last} is missing; continue from the newest periodic one with "
            f"--checkpoint {periodic[-1]}"
        )
    return None
