"""``clean``: accuracy and mean cross-entropy on (a fixed subset of) the test split."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metrics.base import (
    accuracy_headline,
    accuracy_summary,
    batches,
    progress,
    register_metric,
    test_subset,
)


@register_metric(
    "clean",
    headlines=(accuracy_headline("clean"),),
    order=10,
    summary=accuracy_summary,
    settings=(),
)
@torch.no_grad()
def clean(model, data, settings, ctx) -> dict:
    x, y = test_subset(data, settings.get("n_examples", 0))
    correct, loss_sum = 0, 0.0
    nb = math.ceil(x.shape[0] / ctx.batch_size)
    for xb, yb in progress(
        batches(x, y, ctx.batch_size, ctx.device), nb, "clean", ctx.show_progress
    ):
        logits = model(xb).float()
        correct += int((logits.argmax(1) == yb).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    n = x.shape[0]
    return {"accuracy": correct / n, "loss": loss_sum / n, "n_examples": n}
