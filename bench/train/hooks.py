"""The trainer's hooks: the parts of training around the step (the second pass of SAM and AWP,
EMA, checkpoints, the divergence guard, loggers, the progress bar) as objects the loop calls at
fixed points, in the manner of Lightning's callbacks. See docs/methods.md, "The training loop".
"""

from __future__ import annotations

from typing import Any

import torch


class Hook:
    """One part of training; every method is optional, ``tr`` is the calling trainer. Hooks run
    in the trainer's order, which is part of the arithmetic: SAM's second pass before AWP's, AWP's
    restore before the EMA update.

    on_fit_start / on_fit_end   around ``fit`` (the end also by an exception)
    before_update               after the step's backward pass, before the optimiser step
    after_update                after the optimiser step and the broadcast of rank 0's buffers
    on_step_end                 after ``tr.state.step`` moved on (nothing read from the device)
    on_log                      a log window read back and finite: its history line, unrounded means
    on_validation               a periodic validation (main rank)
    on_checkpoint               time to write ``last.pt`` (and a ``step-*.pt`` copy if periodic)
    on_divergence / on_rollback a window beyond the guard's bound; training went back to tr.state.step
    save_into / load_from       this hook's part of a checkpoint
    """

    def on_fit_start(self, tr) -> None: ...
    def before_update(self, tr, x: torch.Tensor, y: torch.Tensor, ctx) -> None: ...
    def after_update(self, tr) -> None: ...
    def on_step_end(self, tr) -> None: ...
    def on_log(self, tr, entry: dict[str, Any], means: dict[str, float]) -> None: ...
    def on_validation(self, tr, result: dict[str, Any]) -> None: ...
    def on_checkpoint(self, tr, periodic: bool) -> None: ...
    def on_divergence(self, tr, reason: str) -> None: ...
    def on_rollback(self, tr, from_step: int) -> None: ...
    def on_fit_end(self, tr) -> None: ...
    def save_into(self, payload: dict[str, Any]) -> None: ...
    def load_from(self, tr, ckpt: dict[str, Any], path) -> None: ...


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
