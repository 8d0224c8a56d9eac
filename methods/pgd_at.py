"""``pgd-at``: adversarial training with PGD (Madry et al., ICLR 2018): CE on l-inf PGD examples.
Its settings are in ``methods/pgd_at.yaml``; docs/methods.md gives the reference, each setting
and the switches (``eps_warmup_epochs``, not the reference, used by the CPU presets)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.attacks.pgd import pgd_linf
from methods._adversarial import awp_variant, check_pgd_settings
from methods._settings import settings
from methods.base import Method, register_method


@dataclass
class PGDATConfig:
    eps: float = 8 / 255  # pixel units
    alpha: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    attack_mode: str = "train"  # model mode while attacking: train (Madry/Rice) | eval
    # >0: ramp eps and alpha linearly from 0 over these epochs (not the reference)
    eps_warmup_epochs: float = 0.0

    def __post_init__(self):
        check_pgd_settings(self)


@register_method("pgd-at")
class PGDAT(Method):
    Config = PGDATConfig
    reference = "Madry et al. 2018, 'Towards Deep Learning Models Resistant to Adversarial Attacks'"
    # the attack's forward/backward pairs, then the loss's forward and backward
    cuda_graph_safe = True
    run_defaults, presets = settings("pgd-at")["run"], settings("pgd-at")["presets"]

    def eps_scale(self, ctx) -> float:
        """1 after the warm-up (or without one); the fraction of it done during it."""
        w = self.cfg.eps_warmup_epochs
        return (
            1.0
            if w <= 0
            else min(1.0, (ctx.epoch_progress + 1.0 / max(1, ctx.steps_per_epoch)) / w)
        )

    def training_step(self, model, x, y, ctx):
        c = self.cfg
        scale = self.eps_scale(ctx)
        with ctx.autocast():
            x_adv = ctx.reuse(
                "x_adv",
                lambda: pgd_linf(
                    model,
                    x,
                    y,
                    eps=c.eps * scale,
                    alpha=c.alpha * scale,
                    steps=c.steps,
                    random_start=c.random_start,
                    mode=c.attack_mode,
                ),
            )
            logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        return {
            "ce_adv": loss,
            "acc_adv": (logits.argmax(1) == y).float().mean().detach(),
            "eps": torch.tensor(c.eps * scale, device=x.device),
        }

    def loss_weights(self):
        return {"ce_adv": 1.0}


# the paper's AT-AWP: this method with adversarial weight perturbation (bench/train/awp.py)
PGDATAWP = awp_variant(PGDAT, "pgd-at-awp", "AT-AWP")
