"""The optimiser and its schedule: SGD or Adam, and the learning rate as a pure function of the
step (warm-up times constant, cosine or step decay), so a resumed run needs no scheduler state.
The settings are ``optim.*`` (docs/methods.md lists each method's)."""

from __future__ import annotations

import math

import torch

from bench.core.errors import BenchError


def build_optimizer(cfg, params, device: torch.device, fast: bool = True) -> torch.optim.Optimizer:
    """SGD or Adam; on CUDA the fused implementation unless ``fast`` is off."""
    fused = {"fused": True} if fast and device.type == "cuda" else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused
        )
    raise BenchError(f"unknown optimiser {cfg.name!r}; choose sgd or adam")


def lr_factor(cfg, step: int, total_steps: int, steps_per_epoch: int, epochs: float) -> float:
    """Warm-up times decay, a pure function of the step (so resume needs no scheduler state)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        decay = 1.0
    elif cfg.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    elif cfg.schedule == "step":
        epoch = step / steps_per_epoch
        marks = [m * epochs if m <= 1 else m for m in cfg.milestones]
        decay = cfg.gamma ** sum(epoch >= m for m in marks)
    else:  # validated earlier
        raise BenchError(f"unknown schedule {cfg.schedule!r}")
    return warm * decay


def total_steps(t, steps_per_epoch: int) -> int:
    """A run's optimiser steps (``t`` a TrainConfig): ``max_steps`` when set, else its epochs' worth."""
    return t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * steps_per_epoch))
