"""Validation during training (``train.eval_every``): accuracy and loss on the first
``train.eval_examples`` validation images (test images where the dataset has no validation split),
of the averaged weights when EMA is on; ``checkpoints/best.pt`` follows it (docs/evaluation.md)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from bench.data import to_float
from bench.train.hooks import Hook, call


class Validation(Hook):
    def __init__(self, every_steps: int):
        self.every = every_steps

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def on_log(self, tr, entry: dict[str, Any], means: dict[str, float]) -> None:
        if self.due(tr.state.step) and tr.dist.is_main:
            result = {**validate(tr), "step": tr.state.step, "epoch": tr.epochs_done}
            tr.state.validation.append(result)
            call(tr.hooks, "on_validation", tr, result)


@torch.no_grad()
def validate(tr) -> dict[str, Any]:
    data, model = tr.data, tr.model
    if data.x_val is not None:
        x, y, split = data.x_val, data.y_val, "val"
    else:
        x, y, split = data.x_test, data.y_test, "test"
    n, bs = min(tr.cfg.train.eval_examples, x.shape[0]), tr.cfg.eval.batch_size
    x, y = x[:n], y[:n]
    was = model.training
    model.eval()
    correct, loss = 0, 0.0
    with tr.ema.applied(model) if tr.ema is not None else contextlib.nullcontext():
        for i in range(0, n, bs):
            xb, yb = to_float(x[i : i + bs].to(tr.device)), y[i : i + bs].to(tr.device)
            with tr.autocast():
                logits = model(xb).float()
            correct += int((logits.argmax(1) == yb).sum())
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
    model.train(was)
    return {"split": split, "n_examples": n, "accuracy": correct / n, "loss": loss / n}
