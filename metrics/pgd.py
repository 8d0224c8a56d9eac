"""``pgd``: robust accuracy under l-inf PGD-k with random start (and optional restarts).
Settings: ``eps``, ``alpha`` (pixel units), ``steps``, ``restarts``, ``eot`` (gradient samples per
step for a model whose forward is random; 1 = none), ``n_examples``. A sample counts as robust only
if it is classified correctly under every restart. The result carries the guardrail checks of
:mod:`metrics.guards` (forward passes, perturbation size, randomness) and ``reliable``."""

from __future__ import annotations

import math

import torch

from bench.attacks.pgd import pgd_linf
from bench.core.errors import BenchError
from metrics.base import (
    Setting,
    accuracy_headline,
    accuracy_summary,
    batches,
    keep_adversarial,
    pgd_attack_key,
    progress,
    register_metric,
    test_subset,
)
from metrics.guards import (
    ForwardWatch,
    PerturbationMeter,
    forward_is_random,
    randomness_check,
    verdict,
    zero_gradient_check,
)

PIXELS = "pixel units, 8/255 = 0.0314"
PGD_SETTINGS = {
    "eps": Setting(float, 0, 1, PIXELS),
    "alpha": Setting(float, 0, 1, PIXELS, open_low=True),
    "steps": Setting(int, 1, unit="attack iterations"),
    "restarts": Setting(int, 1),
    "eot": Setting(int, 1, unit="gradient samples per step; 1 = none"),
    "norm": Setting(str, choices=("Linf",), unit="AutoAttack covers L2: --set autoattack.norm=L2"),
}


@register_metric(
    "pgd",
    headlines=(accuracy_headline("pgd"),),
    order=20,
    summary=accuracy_summary,
    settings=PGD_SETTINGS,
    checked=True,
)
def pgd(model, data, settings, ctx) -> dict:
    if settings.get("norm", "Linf") != "Linf":
        raise BenchError(
            f"pgd attacks in the l-inf norm only (norm Linf), not {settings['norm']!r}; "
            "AutoAttack covers L2 (--set autoattack.norm=L2)"
        )
    eps = settings.get("eps", 8 / 255)
    alpha = settings.get("alpha", 2 / 255)
    steps = int(settings.get("steps", 20))
    restarts = int(settings.get("restarts", 1))
    eot = int(settings.get("eot", 1))
    x, y = test_subset(data, settings.get("n_examples", 0))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(ctx.seed)  # the same random starts for every model evaluated with this seed
    robust = clean = 0
    random, diff, gradients = False, 0.0, {}
    meter = PerturbationMeter()
    kept: list[torch.Tensor] = []
    nb = math.ceil(x.shape[0] / ctx.batch_size)
    try:
        with ForwardWatch(model) as watch:
            for i, (xb, yb) in enumerate(
                progress(
                    batches(x, y, ctx.batch_size, ctx.device), nb, f"pgd-{steps}", ctx.show_progress
                )
            ):
                if i == 0:
                    random, diff = forward_is_random(model, xb[:64])
                    gradients = zero_gradient_check(model, xb[:64], yb[:64])
                with torch.no_grad():
                    clean += int((model(xb).argmax(1) == yb).sum())
                x_adv = pgd_linf(
                    model, xb, yb, eps=eps, alpha=alpha, steps=steps, restarts=restarts, eot=eot
                )
                meter.add(xb, x_adv)
                kept.append(x_adv.cpu())
                with torch.no_grad():
                    robust += int((model(x_adv).argmax(1) == yb).sum())
    finally:
        torch.random.set_rng_state(gen_state)
    n = x.shape[0]
    if (
        not random and n
    ):  # a deterministic model: the same attack gives the same examples (energy reuses them)
        keep_adversarial(ctx, pgd_attack_key(settings, n, ctx.seed), torch.cat(kept))
    out = {
        "accuracy": robust / n,
        "clean_accuracy": clean / n,
        "n_examples": n,
        "eps": eps,
        "eot": eot,
    }
    return verdict(
        out,
        {
            "forward": watch.result(),
            "perturbation": meter.result(eps),
            "gradients": gradients,
            "randomness": randomness_check(random, diff, eot),
        },
    )
