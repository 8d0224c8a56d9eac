"""Adversarial weight perturbation around any optimiser (AWP; Wu, Xia and Wang, NeurIPS 2020) as
the trainer's hook: the algorithm, its settings (``optim.awp_gamma``, ``optim.awp_warmup_epochs``)
and its one departure from the reference are in docs/methods.md, "`pgd-at-awp`, ...".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.core.timing import region
from bench.train.hooks import Hook

_EPS = 1e-20  # the reference's guard against a zero gradient
PAPER_GAMMA = 5e-3  # the paper's weight-perturbation budget (AT-AWP, TRADES-AWP, MART-AWP)


def perturbed_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The parameters AWP moves: weight matrices and convolution kernels (``ndim >= 2``)."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]


@torch.no_grad()
def perturb(params: list[torch.Tensor], gamma: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move each of ``params`` with a gradient by ``v = gamma * ||w|| * g / ||g||`` (in place);
    returns the ``(parameter, v)`` pairs for :func:`restore`."""
    moves = []
    for p in params:
        if p.grad is None:
            continue
        g = p.grad.float()
        v = (gamma * torch.linalg.vector_norm(p.float()) / (torch.linalg.vector_norm(g) + _EPS)) * g
        v = v.to(p.dtype)
        p.add_(v)
        moves.append((p, v))
    return moves


@torch.no_grad()
def restore(moves: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Subtract each ``v`` again (after the optimiser stepped at ``w + v``)."""
    for p, v in moves:
        p.sub_(v)


def active(gamma: float, warmup_epochs: float, epoch_progress: float) -> bool:
    """AWP applies at this step: on (``gamma`` > 0) and past its warm-up."""
    return gamma > 0 and epoch_progress >= warmup_epochs


class AWPPass(Hook):
    """``optim.awp_gamma`` > 0: the gradient at ``w + v``; the optimiser steps there, then ``v`` is
    removed (before any later hook sees the weights, e.g. the EMA)."""

    def __init__(self, model: nn.Module, opt):
        self.params, self.opt = perturbed_parameters(model), opt
        self.moves: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_update(self, tr, x: torch.Tensor, y: torch.Tensor, ctx) -> None:
        if active(self.opt.awp_gamma, self.opt.awp_warmup_epochs, ctx.epoch_progress):
            with region("awp"):
                self.moves = perturb(self.params, self.opt.awp_gamma)
                tr.second_pass(x, y, ctx)

    def after_update(self, tr) -> None:
        restore(self.moves)
        self.moves = []
