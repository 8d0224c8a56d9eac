"""l-infinity PGD (Madry et al. 2018), whole batch at once, input-only gradients.

Every step takes ``torch.autograd.grad(objective, x)``: no weight gradients are computed or
accumulated, so an attack inside a training step leaves the parameters' ``.grad`` untouched.
``eps`` and ``alpha`` are in pixel units ([0, 1] images).

Precision: the iterates and their arithmetic (start, signed step, projection, clamp) stay in fp32
whatever the caller's autocast; only the network's forward runs under it (bf16 on the fast path).
A half-precision batch is promoted to fp32 first: bf16 resolves about 2^-8 relative, so a start
perturbation such as TRADES's 0.001 * N(0, I) would round away on most pixels in bf16 iterates.
``fp32_steps`` runs the first steps' forwards outside autocast as well, for objectives whose
gradient at the start is too small for bf16 to resolve (see :func:`bench.attacks.trades.trades_attack`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.core.timing import region
from bench.models.base import model_mode

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, y) -> scalar to ascend


def ce_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (a sum keeps per-sample gradients independent of the batch size)."""
    return F.cross_entropy(logits.float(), y, reduction="sum")


def input_grad(objective: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(objective, x)
    return g


def as_iterate(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached, as an attack iterate: fp32 at least (a bf16 or fp16 batch is promoted, an fp32
    or fp64 one kept), so the start, steps and projection never round to half precision."""
    x = x.detach()
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def full_precision(x: torch.Tensor):
    """A block whose network forwards run in the parameters' precision (fp32): autocast off on ``x``'s device."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def project_linf(
    x_adv: torch.Tensor, x: torch.Tensor, eps: float, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    """Project onto the eps-ball around ``x`` and the valid range [lo, hi]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(lo, hi)


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    objective: Objective = ce_objective,
    mode: str | None = None,
    restarts: int = 1,
    lo: float = 0.0,
    hi: float = 1.0,
    start: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eot: int = 1,
    fp32_steps: int = 0,
) -> torch.Tensor:
    """Return adversarial examples for ``(x, y)`` (detached, within the eps-ball and [lo, hi]).

    ``mode`` puts the model in eval or train mode for the attack (restored after). With
    ``restarts`` > 1 each sample keeps the restart that misclassifies it (then the highest loss).
    ``start``, when given, maps the clean batch to the starting point of each restart in place
    of the uniform random start (used as returned: the projection applies after the first
    step; TRADES starts from ``x + 0.001 * N(0, I)``).
    ``eot`` > 1: expectation over transformation for a model whose forward is random; each step
    follows the sign of the gradient summed over ``eot`` forward/backward passes.
    ``fp32_steps``: the first this many steps (of each restart) run the network outside autocast.
    The returned batch is fp32 (or fp64 for an fp64 ``x``), detached.
    """
    x = as_iterate(x)
    best, best_loss, best_wrong = x.clone(), None, None
    with region("attack"), model_mode(model, mode), torch.enable_grad():
        for _ in range(max(1, restarts)):
            if start is not None:
                x_adv = start(x).detach()
            elif random_start:
                delta = torch.empty_like(x, memory_format=torch.contiguous_format).uniform_(
                    -eps, eps
                )
                x_adv = (x + delta).clamp_(lo, hi)
            else:
                x_adv = x.clone()
            for k in range(steps):
                x_adv.requires_grad_(True)
                with full_precision(x) if k < fp32_steps else contextlib.nullcontext():
                    g = input_grad(objective(model(x_adv), y), x_adv)
                    for _ in range(eot - 1):
                        g = g + input_grad(objective(model(x_adv), y), x_adv)
                x_adv = project_linf(x_adv.detach() + alpha * g.sign(), x, eps, lo, hi)
            x_adv = x_adv.detach()
            if restarts <= 1:
                return x_adv
            with torch.no_grad():
                logits = model(x_adv).float()
                loss = F.cross_entropy(logits, y, reduction="none")
                wrong = logits.argmax(1) != y
            if best_loss is None:
                best, best_loss, best_wrong = x_adv, loss, wrong
            else:
                take = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
                best = torch.where(take[:, None, None, None], x_adv, best)
                best_loss = torch.where(take, loss, best_loss)
                best_wrong = best_wrong | wrong
    return best
