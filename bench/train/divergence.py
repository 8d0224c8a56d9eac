"""The log window and the divergence guard (``train.on_divergence``: stop, or roll back to the
last good checkpoint with a lower learning rate and new seeds); docs/reliability.md says how a
run that diverged looks and resumes."""

from __future__ import annotations

import math
import sys
import time

import torch

from bench.core.errors import DivergenceError
from bench.train import distributed as D
from bench.train.hooks import Hook, call


class LogWindow:
    """The logged terms of the steps since the last read-back, kept on the device (each term's sum
    and largest magnitude), so a step adds no host synchronisation."""

    def __init__(self) -> None:
        self.clear()
        self.restart_clock()

    def clear(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.peaks: dict[str, torch.Tensor] = {}
        self.count = 0

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def add(self, logged: dict[str, torch.Tensor]) -> None:
        self.count += 1
        for k, v in logged.items():
            v = v.mean() if v.ndim else v
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.peaks[k] = torch.maximum(self.peaks[k], v.abs()) if k in self.peaks else v.abs()

    def read(
        self, dist: D.DistInfo, bound: float, step: int
    ) -> tuple[dict[str, float], str | None]:
        """Every term's mean over the window (and the ranks), and why the window counts as
        diverged (a term non-finite, or beyond ``bound`` in magnitude), or None."""
        sums, peaks = D.reduce_logged(self.sums, self.peaks, self.count, dist)
        means = {k: float(v) / self.count for k, v in sums.items()}
        peaks = {k: float(v) for k, v in peaks.items()}
        for k in means:
            if not math.isfinite(means[k]) or not math.isfinite(peaks[k]):
                return means, f"non-finite {k} near step {step}"
            if peaks[k] > bound:
                why = f"{k} exploded to {peaks[k]:.3g} (> train.divergence_bound={bound:g})"
                return means, f"{why} near step {step}"
        return means, None


class DivergenceGuard(Hook):
    """Stop with :class:`DivergenceError`, or reload ``checkpoints/last.pt`` with the learning
    rate times ``train.rollback_lr_factor`` and the step seeds salted by the rollback count."""

    def on_divergence(self, tr, reason: str) -> None:
        t, state = tr.cfg.train, tr.state
        last = tr.ckpt_dir / "last.pt"
        if t.on_divergence != "rollback" or state.rollbacks >= t.max_rollbacks:
            tr.on_update(state, "diverged")
            hint = (
                "set --on-divergence rollback, lower optim.lr"
                if t.on_divergence == "stop"
                else f"rolled back {state.rollbacks} times already (train.max_rollbacks); lower optim.lr"
            )
            raise DivergenceError(
                f"training diverged: {reason}; last good checkpoint kept at {last} ({hint})"
            )
        bad_step, rollbacks = state.step, state.rollbacks + 1
        scale, events = state.lr_scale * t.rollback_lr_factor, list(state.rollback_events)
        tr.load_checkpoint(last)  # a new tr.state; the rollbacks survive the reload
        tr.state.rollbacks, tr.state.lr_scale = rollbacks, scale
        event = {
            "at_step": bad_step,
            "to_step": tr.state.step,
            "reason": reason,
            "lr_scale": scale,
            "reseed": rollbacks,
        }
        tr.state.rollback_events = events + [event]
        if tr.dist.is_main:
            print(
                f"divergence: {reason}; rolled back to step {tr.state.step}, learning rate x{scale:g}, "
                "reseeded",
                file=sys.stderr,
            )
        call(tr.hooks, "on_rollback", tr, bad_step)  # the loggers drop the steps after it
        tr.on_update(tr.state, "rollback")
