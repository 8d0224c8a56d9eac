"""The TRADES inner maximisation (Zhang et al., ICML 2019; ``yaodongyu/TRADES``) on the shared l-inf
PGD loop: x_adv maximises the summed KL(softmax f(x) || softmax f(x_adv)) over the eps-ball around x
(pixel units) from ``x + 0.001 * N(0, I)`` (not clamped), model in eval mode, the clean
probabilities held fixed. Under bf16 autocast the clean pass and the first step run in fp32: at the
start the KL's gradient is below a bf16 forward's rounding (docs/methods.md, "Attacks and samplers
under bf16").
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
