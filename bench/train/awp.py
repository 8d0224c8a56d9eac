"""Adversarial weight perturbation around any optimiser: AWP (Wu, Xia and Wang, NeurIPS 2020,
"Adversarial Weight Perturbation Helps Robust Generalization"), as its authors' AT-AWP and
TRADES-AWP train.

One AWP step, driven by the trainer (``optim.awp_gamma`` > 0):

1. the method's loss at ``w`` on its adversarial examples, and its gradient ``g`` (the
   authors take one SGD ascent step on a copy of the model; its direction per layer is ``g``);
2. :func:`perturb`: every weight matrix / convolution kernel ``w_l`` (tensors of two or more
   dimensions; biases and batch-norm affine parameters are left alone, as in the reference)
   moves to ``w_l + v_l`` with ``v_l = gamma * ||w_l|| * g_l / ||g_l||``: one step whose size is
   relative to each layer's norm;
3. the loss again at ``w + v`` on the same adversarial examples (``StepContext.reuse``), with
   batch-norm running statistics frozen (the first pass already updated them once), and its
   gradient; the optimiser steps at ``w + v``;
4. :func:`restore`: ``v`` is subtracted again, as the reference does after its optimiser step.

``gamma`` = 5e-3 is the paper's budget (``optim.awp_gamma``); ``optim.awp_warmup_epochs`` delays
the perturbation (plain steps before it).

Departure, stated: the reference evaluates the ascent step on a copy of the model, so the
model's batch-norm running statistics are updated by the forward at ``w + v``; here they are
updated by the first pass at ``w`` (the step a run without AWP would take) and frozen at ``w + v``.
The two forwards differ by a relative weight change of ``gamma``.
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

    def __init__(self, model: nn.Module, gamma: float, warmup_epochs: float):
        self.params, self.gamma, self.warmup_epochs = (
            perturbed_parameters(model),
            gamma,
            warmup_epochs,
        )
        self.moves: list[tuple[torch.Tensor, torch.Tensor]] = []

    def before_update(self, tr, x: torch.Tensor, y: torch.Tensor, ctx) -> None:
        if active(self.gamma, self.warmup_epochs, ctx.epoch_progress):
            with region("awp"):
                self.moves = perturb(self.params, self.gamma)
                tr.second_pass(x, y, ctx)

    def after_update(self, tr) -> None:
        restore(self.moves)
        self.moves = []
