"""``pgd``: robust accuracy under l-inf PGD-k with random start (and optional restarts).

Settings: ``eps``, ``alpha`` (pixel units), ``steps``, ``restarts``, ``n_examples``. A sample
counts as robust only if it is classified correctly under every restart.
"""

from __future__ import annotations

import math

import torch

from bench.attacks.pgd import pgd_linf
from metrics.base import accuracy_headline, accuracy_summary, batches, progress, register_metric, test_subset


@register_metric("pgd", headlines=(accuracy_headline("pgd"),), order=20, summary=accuracy_summary,
                 settings=("eps", "alpha", "steps", "restarts"))
def pgd(model, data, settings, ctx) -> dict:
    eps = settings.get("eps", 8 / 255)
    alpha = settings.get("alpha", 2 / 255)
    steps = int(settings.get("steps", 20))
    restarts = int(settings.get("restarts", 1))
    x, y = test_subset(data, settings.get("n_examples", 0))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(ctx.seed)  # the same random starts for every model evaluated with this seed
    robust = clean = 0
    nb = math.ceil(x.shape[0] / ctx.batch_size)
    try:
        for xb, yb in progress(batches(x, y, ctx.batch_size, ctx.device), nb, f"pgd-{steps}", ctx.show_progress):
            with torch.no_grad():
                clean += int((model(xb).argmax(1) == yb).sum())
            x_adv = pgd_linf(model, xb, yb, eps=eps, alpha=alpha, steps=steps, restarts=restarts)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == yb).sum())
    finally:
        torch.random.set_rng_state(gen_state)
    n = x.shape[0]
    return {"accuracy": robust / n, "clean_accuracy": clean / n, "n_examples": n}
