"""The trainer's hooks: the parts of training around the step (the second pass of SAM and AWP,
EMA, checkpoints, the divergence guard, loggers, the progress bar) as objects the loop calls at
fixed points, in the manner of Lightning's callbacks. See docs/methods.md, "The training loop".
"""

from __future__ import annotations

from typing import Any

import torch


class Hook:
    """One part of training. Every method is optional; ``tr`` is the calling
    ``bench.train.trainer.Trainer``. Hooks run in the trainer's order, which is part of the
    arithmetic: SAM's second pass before AWP's, AWP's restore before the EMA update."""

    def on_fit_start(self, tr) -> None:
        """Before the first step of ``fit``."""

    def before_update(self, tr, x: torch.Tensor, y: torch.Tensor, ctx) -> None:
        """After the step's backward pass, before the optimiser step."""

    def after_update(self, tr) -> None:
        """After the optimiser step (and the broadcast of rank 0's buffers)."""

    def on_step_end(self, tr) -> None:
        """After ``tr.state.step`` moved on, reading nothing back from the device."""

    def on_log(self, tr, entry: dict[str, Any], means: dict[str, float]) -> None:
        """A log window read back and found finite: ``entry`` is its line of the history,
        ``means`` the terms' unrounded means."""

    def on_validation(self, tr, result: dict[str, Any]) -> None:
        """A periodic validation (main rank only)."""

    def on_checkpoint(self, tr, periodic: bool) -> None:
        """Time to write ``checkpoints/last.pt`` (and, if ``periodic``, a ``step-*.pt`` copy)."""

    def on_divergence(self, tr, reason: str) -> None:
        """A log window was non-finite or beyond ``train.divergence_bound``."""

    def on_rollback(self, tr, from_step: int) -> None:
        """Training went back from ``from_step`` to ``tr.state.step``."""

    def on_fit_end(self, tr) -> None:
        """``fit`` ends, by finishing or by an exception."""

    def save_into(self, payload: dict[str, Any]) -> None:
        """Add this hook's state to a checkpoint's ``payload``."""

    def load_from(self, tr, ckpt: dict[str, Any], path) -> None:
        """Take this hook's state back from a loaded checkpoint."""


def call(hooks: list[Hook], event: str, *args) -> None:
    for hook in hooks:
        getattr(hook, event)(*args)


class ProgressBar(Hook):
    """The tqdm bar: a tick per step, the weighted terms and the loss of each log window."""

    def __init__(self, show: bool):
        self.show, self.bar = show, None

    def on_fit_start(self, tr) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=tr.total_steps,
            initial=tr.state.step,
            disable=not self.show,
            desc=tr.cfg.method,
            unit="step",
            dynamic_ncols=True,
        )

    def on_step_end(self, tr) -> None:
        self.bar.update(1)

    def on_log(self, tr, entry: dict[str, Any], means: dict[str, float]) -> None:
        shown = {k: f"{v:.3g}" for k, v in means.items() if k in tr.loss_weights or k == "loss"}
        self.bar.set_postfix(shown)

    def on_divergence(self, tr, reason: str) -> None:
        self.bar.close()  # before a rollback's note or the error

    def on_rollback(self, tr, from_step: int) -> None:
        self.on_fit_start(tr)

    def on_fit_end(self, tr) -> None:
        if self.bar is not None:
            self.bar.close()
