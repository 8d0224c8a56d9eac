"""``ce``: plain cross-entropy training, the accuracy baseline."""

from __future__ import annotations

import torch.nn.functional as F

from methods._settings import settings
from methods.base import Method, register_method


@register_method("ce")
class CrossEntropy(Method):
    reference = "standard supervised training (SGD 0.1, momentum 0.9, wd 5e-4, batch 128)"
    cuda_graph_safe = True  # one forward, one backward
    run_defaults = settings("ce")["run"]

    def training_step(self, model, x, y, ctx):
        with ctx.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(1) == y).float().mean()
        return {"ce": loss, "acc": acc.detach()}
