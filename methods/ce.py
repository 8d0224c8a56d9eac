"""``ce``: plain cross-entropy training, the accuracy baseline."""

from __future__ import annotations

import torch.nn.functional as F

from methods.base import Method, register_method


@register_method("ce")
class CrossEntropy(Method):
    reference = "standard supervised training (SGD 0.1, momentum 0.9, wd 5e-4, batch 128)"
    cuda_graph_safe = True  # one forward, one backward
    run_defaults = {
        "optim": {
            "name": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
        },
        "data": {"batch_size": 128},
        "train": {"epochs": 200},
    }

    def training_step(self, model, x, y, ctx):
        with ctx.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        acc = (logits.argmax(1) == y).float().mean()
        return {"ce": loss, "acc": acc.detach()}
