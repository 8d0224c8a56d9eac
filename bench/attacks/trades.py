"""The TRADES inner maximisation (Zhang et al., ICML 2019), on the shared l-inf PGD loop.

x_adv maximises KL(softmax f(x) || softmax f(x_adv)) over the eps-ball around x: the clean
probabilities are computed once, in the attack's model mode, and held fixed; the start is
``x + start_std * N(0, I)`` (not clamped; the projection onto the eps-ball and [0, 1] applies
after every signed step). As ``yaodongyu/TRADES`` (trades.py): model in eval mode, start std
0.001, summed KL, sign steps. ``eps`` and ``alpha`` are in pixel units ([0, 1] images).

Under bf16 autocast (the fast path) the clean probabilities and the first step run in fp32. At
the start the KL's gradient with respect to the adversarial logits is p(x + d) - p_clean, of the
order of the 0.001 * N(0, I) perturbation d: far below the rounding of a bf16 forward (about 2^-8
relative in every activation), so a bf16 first step follows rounding noise, not the curvature the
start is there to probe. Measured on CPU (an untrained resnet8, batch norm warmed): the bf16
first step's signs agree with the fp32 step's on 50 % of the pixels (chance), and on 56 % after
10 steps; with the first step and the clean pass in fp32, on 100 % and 95 %. From the second
iterate on, x_adv - x is a whole signed step (alpha = 2/255), the KL's gradient is well above the
rounding, and the forwards run under autocast again. Cost: one clean forward and one
forward/backward in fp32 instead of bf16; outside autocast nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.attacks.pgd import as_iterate, full_precision, pgd_linf
from bench.models.base import model_mode


def kl_sum(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """sum_i KL(p_clean_i || softmax(logits_adv_i)), as PyTorch's summed KLDivLoss (0 log 0 = 0)."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), p_clean.float(), reduction="sum")


def kl_objective(p_clean: torch.Tensor):
    """A ``pgd_linf`` objective: the summed KL against fixed clean probabilities (labels unused)."""

    def objective(logits: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return kl_sum(logits, p_clean)

    return objective


def trades_attack(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    start_std: float = 0.001,
    mode: str | None = "eval",
) -> torch.Tensor:
    """Return the TRADES adversarial batch for clean images ``x`` in [0, 1] (detached, fp32)."""
    x = as_iterate(x)
    with (
        model_mode(model, mode),
        torch.no_grad(),
        full_precision(x),
    ):  # the first step's target, in fp32
        p_clean = F.softmax(model(x).float(), dim=1)
    x_adv = pgd_linf(
        model,
        x,
        None,
        eps=eps,
        alpha=alpha,
        steps=steps,
        objective=kl_objective(p_clean),
        mode=mode,
        start=lambda c: c + start_std * torch.randn_like(c, memory_format=torch.contiguous_format),
        fp32_steps=1,
    )
    if steps == 0:  # the reference's final clamp (after >= 1 step it is a no-op)
        x_adv = x_adv.clamp(0.0, 1.0)
    return x_adv
