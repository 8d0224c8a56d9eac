"""``mart``: MART (Wang et al., ICLR 2020): boosted CE on PGD examples plus beta times a KL weighted
by 1 - p_y(x), with the reference code's constants. Its settings are in ``methods/mart.yaml``;
docs/methods.md gives the formulas, the reference, each setting and the switches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.attacks.pgd import pgd_linf
from bench.core.errors import BenchError
from methods._adversarial import awp_variant, check_pgd_settings
from methods._settings import settings
from methods.base import Method, register_method


@dataclass
class MARTConfig:
    beta: float = 6.0  # weight of the misclassification-weighted KL (lambda in the paper)
    eps: float = 8 / 255  # pixel units
    alpha: float = 2 / 255  # pixel units
    steps: int = 10
    start_std: float = 0.001  # std of the Gaussian start around x
    attack_mode: str = "eval"  # model mode while attacking (the reference: eval)
    # >0: ramp eps and alpha linearly from 0 over these epochs (not the reference)
    eps_warmup_epochs: float = 0.0

    def __post_init__(self):
        check_pgd_settings(self)
        if self.beta < 0 or self.start_std < 0:
            raise BenchError("method.beta and method.start_std must be >= 0")


def mart_terms(
    logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """MART's three loss terms from the clean and adversarial logits (float32, batch means)."""
    p, q = F.softmax(logits.float(), dim=1), F.softmax(logits_adv.float(), dim=1)
    # the most probable wrong class under attack (the reference: top-2 of q, skipping y)
    wrong = q.scatter(1, y[:, None], -1.0).argmax(1)
    boost = -torch.log(1.0001 - q.gather(1, wrong[:, None]).squeeze(1) + 1e-12).mean()
    kl = F.kl_div(torch.log(q + 1e-12), p, reduction="none").sum(1)  # KL(p_i || q_i), 0 log 0 = 0
    p_true = p.gather(1, y[:, None]).squeeze(1)
    return {
        "ce_adv": F.cross_entropy(logits_adv.float(), y),
        "boost": boost,
        "kl": (kl * (1.0000001 - p_true)).sum() / y.shape[0],
    }


@register_method("mart")
class MART(Method):
    Config = MARTConfig
    reference = (
        "Wang et al. 2020, MART: boosted CE on PGD-10 examples + beta * KL weighted by "
        "1 - p_y(x) (YisenWang/MART)"
    )
    # the attack's forward/backward pairs, then the loss's two forwards and backward
    cuda_graph_safe = True
    run_defaults, presets = settings("mart")["run"], settings("mart")["presets"]

    def training_step(self, model, x, y, ctx):
        c = self.cfg
        # the fraction of the warm-up done by the end of this step (1 without one)
        w = c.eps_warmup_epochs
        scale = (
            1.0
            if w <= 0
            else min(1.0, (ctx.epoch_progress + 1.0 / max(1, ctx.steps_per_epoch)) / w)
        )
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
                    mode=c.attack_mode,
                    start=lambda clean: (
                        clean
                        + c.start_std
                        * torch.randn_like(clean, memory_format=torch.contiguous_format)
                    ),
                ),
            )
            logits = model(x)
            logits_adv = model(x_adv)
        return {
            **mart_terms(logits, logits_adv, y),
            "acc": (logits.argmax(1) == y).float().mean().detach(),
            "acc_adv": (logits_adv.argmax(1) == y).float().mean().detach(),
            "eps": torch.tensor(c.eps * scale, device=x.device),
        }

    def loss_weights(self):
        return {"ce_adv": 1.0, "boost": 1.0, "kl": self.cfg.beta}


# the paper's MART-AWP: this method with adversarial weight perturbation (bench/train/awp.py)
MARTAWP = awp_variant(MART, "mart-awp", "MART-AWP")
