"""The trainer's settings put to work: the optimiser and its learning rate, a pure function of
the step (so resume needs no scheduler state); the per-step seeds that make a resumed run replay
the uninterrupted one; ``torch.compile``; deterministic algorithms; and Ctrl-C / SIGTERM as a
request to checkpoint and stop (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import types
from collections.abc import Iterator

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


def compile_model(model: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
    """``torch.compile`` the model's forward in place (state-dict keys unchanged), so every call
    through ``model(x)`` runs the compiled graph (docs/methods.md, "The fast path")."""
    options = {"backend": backend}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    model.compile(**options)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``train.deterministic``: torch's deterministic algorithms for the block (an op that has none
    fails, naming itself) and no cuDNN autotuning; the previous settings are restored afterwards."""
    if not enabled:
        yield
        return
    was, autotune = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.benchmark = autotune


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """The global RNGs' seed at the start of a step: data order depends only on ``(seed, epoch)``
    and every draw of a step on ``(seed, step, rollbacks)``, so a resumed run replays exactly."""
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729 + 12_345) % (2**63 - 1)


@contextlib.contextmanager
def interrupt_requests() -> Iterator[types.SimpleNamespace]:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) inside the block sets ``.requested``,
    which the loop checks between steps: the run checkpoints and stops resumable. A second signal
    aborts at once."""
    flag = types.SimpleNamespace(requested=False)

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not in the main thread
            old[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, previous in old.items():
            if previous is None:  # installed from C: fall back to Python's default
                previous = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, previous)
