"""``trades``: TRADES (Zhang et al., ICML 2019): CE on the clean batch plus beta times the KL to
the adversarial one (the attack: ``bench.attacks.trades``). Its settings are in
``methods/trades.yaml``; docs/methods.md gives the reference, each setting and the switches."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from bench.attacks.trades import kl_sum, trades_attack
from bench.core.errors import BenchError
from methods._adversarial import awp_variant
from methods._settings import settings
from methods.base import Method, register_method


@dataclass
class TRADESConfig:
    beta: float = 6.0  # weight of the robust KL term (1/lambda in the paper)
    eps: float = 8 / 255  # pixel units
    alpha: float = 2 / 255  # pixel units
    steps: int = 10
    start_std: float = 0.001  # std of the Gaussian start around x
    attack_mode: str = "eval"  # model mode while attacking (the reference: eval)
    # reuse the CE forward as the KL target (reference: a second forward)
    single_clean_forward: bool = False

    def __post_init__(self):
        if self.attack_mode not in ("train", "eval"):
            raise BenchError(
                f"method.attack_mode={self.attack_mode!r} is not valid; choose train or eval"
            )
        if self.steps < 1 or self.eps <= 0 or self.alpha <= 0:
            raise BenchError("method.steps must be >= 1 and method.eps, method.alpha positive")
        if self.beta < 0 or self.start_std < 0:
            raise BenchError("method.beta and method.start_std must be >= 0")


@register_method("trades")
class TRADES(Method):
    Config = TRADESConfig
    reference = (
        "Zhang et al. 2019, 'Theoretically Principled Trade-off between Robustness and Accuracy' "
        "(yaodongyu/TRADES)"
    )
    # the attack's forward/backward pairs, then the loss's three forwards and backward
    cuda_graph_safe = True
    run_defaults, presets = settings("trades")["run"], settings("trades")["presets"]

    def training_step(self, model, x, y, ctx):
        c = self.cfg
        with ctx.autocast():
            x_adv = ctx.reuse(
                "x_adv",
                lambda: trades_attack(
                    model,
                    x,
                    eps=c.eps,
                    alpha=c.alpha,
                    steps=c.steps,
                    start_std=c.start_std,
                    mode=c.attack_mode,
                ),
            )
            logits = model(x)
            logits_adv = model(x_adv)
            logits_target = logits if c.single_clean_forward else model(x)
        ce = F.cross_entropy(logits.float(), y)
        kl = kl_sum(logits_adv, F.softmax(logits_target.float(), dim=1)) / x.shape[0]
        return {
            "ce": ce,
            "kl": kl,
            "acc": (logits.argmax(1) == y).float().mean().detach(),
            "acc_adv": (logits_adv.argmax(1) == y).float().mean().detach(),
        }

    def loss_weights(self):
        return {"ce": 1.0, "kl": self.cfg.beta}


# the paper's TRADES-AWP: this method with adversarial weight perturbation (bench/train/awp.py)
TRADESAWP = awp_variant(TRADES, "trades-awp", "TRADES-AWP")
