"""``mart``: MART (Wang et al., ICLR 2020, "Improving Adversarial Robustness Requires Revisiting
Misclassified Examples"; ``YisenWang/MART`` mart.py and train_wideresnet.py).

Loss per batch, with p = softmax f(x), q = softmax f(x_adv), both forwards in train mode (clean first):

    BCE  = CE(f(x_adv), y) - mean_i log(1.0001 - max_{k != y_i} q_ik + 1e-12)     (logged: ce_adv, boost)
    KL_w = (1/n) sum_i KL(p_i || q_i) * (1.0000001 - p_i,y_i),  KL with log(q + 1e-12)   (logged: kl)
    loss = BCE + beta * KL_w

The constants are the reference code's. As there, neither p in the KL nor the weight 1 - p_y(x)
is detached: the gradient reaches the clean forward through both. x_adv is PGD on the
cross-entropy (``bench.attacks.pgd.pgd_linf``) with the model in eval mode, from
x + 0.001 N(0, I) (not clamped), ``steps`` signed steps of ``alpha``, each projected onto the
eps-ball and [0, 1]. Defaults: beta 6, eps 8/255, alpha 2/255 (the script: 0.031, 0.007), 10 steps;
train_wideresnet.py's run: WRN-34-10 on [0, 1] inputs without normalisation, crop (zero pad 4) +
flip, SGD 0.1, momentum 0.9, wd 7e-4, batch 128, 90 epochs, lr x0.1 from the script's (1-based)
epochs 75, 90, 100 (0-based 74, 89, 99 here). train_resnet.py's ResNet-18 run differs (beta 5,
SGD 0.01, wd 3.5e-3, 120 epochs): docs/methods.md gives its --set line.
Departure (off by default, recorded): ``eps_warmup_epochs`` ramps eps and alpha from 0, as pgd-at's
does, for the CPU presets, where a small model otherwise stays at chance.
"""

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
        w = (
            c.eps_warmup_epochs
        )  # the fraction of the warm-up done by the end of this step (1 without one)
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
