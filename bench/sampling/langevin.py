"""Gradient samplers on the energy of a classifier: SGLD (JEM) and PYLD (JEM++). They work on the
symmetric [-1, 1] scale and call the model on ``from_sym(xs)``; as the models normalise with
``(x - 0.5) / 0.5``, the gradient with respect to ``xs`` is the one the references took on their
[-1, 1] inputs. They ascend ``-E`` (``E(x)``, or ``E(x, y)`` given ``y``) on whole batches, with
input-only gradients (``torch.autograd.grad``): nothing accumulates in ``.grad``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.models.base import (  # noqa: F401 (MODES, to_sym: re-exported)
    MODES,
    EnergyClassifier,
    energy_from_logits,
    from_sym,
    model_mode,
    to_sym,
)


def neg_energy_sum(
    model: nn.Module, xs: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of -E over the batch, per-sample E detached)`` for symmetric-scale images."""
    e = energy_from_logits(model(from_sym(xs)), y)
    return -e.sum(), e.detach()


def _tick(trace: dict) -> None:
    """One sampler step done: calls ``trace["on_step"]`` when given (progress; reads nothing off the device)."""
    if trace.get("on_step") is not None:
        trace["on_step"]()


def sgld(
    model: nn.Module,
    x: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    noise_std: float,
    clamp: bool,
    y: torch.Tensor | None = None,
    mode: str = "eval",
    grad_clamp: float = 0.0,
    trace: dict | None = None,
) -> torch.Tensor:
    """Stochastic-gradient Langevin dynamics on the symmetric scale (JEM's sampler).

    ``steps`` iterations of ``x <- x + step_size * grad_x(-E(x)) + noise_std * N(0, I)``;
    ``clamp`` clamps ``x`` to [-1, 1] after each step (JEM: off); ``grad_clamp`` > 0 clamps the
    gradient to +-grad_clamp first (the SADA-JEM variant). ``mode`` is the model's mode while
    sampling (JEM: eval). ``trace``, when given, receives ``energy_start`` (the batch mean of E
    at the start). Returns the final batch, detached.
    """
    trace, x = {} if trace is None else trace, x.detach().clone()
    with model_mode(model, mode):
        for k in range(steps):
            x.requires_grad_(True)
            f, e = neg_energy_sum(model, x, y)
            if k == 0:
                trace["energy_start"] = e.mean()
            (g,) = torch.autograd.grad(f, x)
            with torch.no_grad():
                if grad_clamp > 0:
                    g = g.clamp(-grad_clamp, grad_clamp)
                x = x.detach() + step_size * g
                if noise_std > 0:
                    x = x + noise_std * torch.randn_like(x, memory_format=torch.contiguous_format)
                if clamp:
                    x = x.clamp_(-1.0, 1.0)
            _tick(trace)
    trace["steps"] = steps
    return x.detach()


def first_layer_is_affine(model: nn.Module) -> bool:
    """True when ``model.stem`` is normalisation + an affine first layer (conv or linear).

    Then the gradient of ``<p, stem(x)>`` with respect to the input does not depend on the
    input, which is what PYLD's fast path uses.
    """
    if not isinstance(model, EnergyClassifier):
        return False
    if (
        type(model).stem is not EnergyClassifier.stem
        or type(model).normalize is not EnergyClassifier.normalize
    ):
        return False
    return type(getattr(model, "first_layer", None)) in (nn.Conv2d, nn.Linear)


def pyld(
    model: nn.Module,
    x: torch.Tensor,
    *,
    n_steps: int,
    in_steps: int,
    lr: float = 0.2,
    eps: float = 1.0,
    sgld_lr: float = 0.0,
    sgld_std: float = 0.0,
    y: torch.Tensor | None = None,
    mode: str = "keep",
    fast: bool | None = None,
    trace: dict | None = None,
) -> torch.Tensor:
    """Proximal YOPO Langevin dynamics (JEM++'s sampler), on the symmetric scale.

    Each of ``n_steps`` outer steps takes one full gradient of ``sum(-E(x))`` and the adjoint
    ``p`` (the gradient with respect to the first layer's output, ``model.stem(x)``); if
    ``sgld_lr`` > 0 it steps ``x <- clamp(x + sgld_lr * clamp(grad, -eps, eps), -1, 1)``; then
    ``in_steps`` inner steps use only the first layer:
    ``x <- clamp(x + lr * clamp(grad_x <p, stem(x)>, -eps, eps), -1, 1)``; finally, if
    ``sgld_std`` > 0, Gaussian noise is added (not clamped).

    ``fast``: when the first layer is affine the inner gradient equals ``stem^T p``, the outer
    full gradient, and does not change across inner steps; the fast path reuses it (no stem
    forward/backward per inner step) and keeps the per-sub-step range clamp, so it computes the
    same iterates. ``None`` picks it whenever :func:`first_layer_is_affine` holds; ``True``
    demands it. ``mode`` is the model's mode while sampling (JEM++: train, i.e. "keep" inside a
    training step). Returns the final batch, detached.
    """
    affine = first_layer_is_affine(model)
    if fast is None:
        fast = affine
    if fast and not affine:
        raise ValueError(
            "pyld(fast=True) needs an EnergyClassifier whose stem is normalisation + an affine first layer"
        )
    if not fast and not (hasattr(model, "stem") and hasattr(model, "trunk")):
        raise ValueError("pyld needs a model with stem(x) and trunk(h) (an EnergyClassifier)")
    trace, x = {} if trace is None else trace, x.detach().clone()
    with model_mode(model, mode):
        for k in range(n_steps):
            x.requires_grad_(True)
            if fast:
                f, e = neg_energy_sum(model, x, y)
                (g,) = torch.autograd.grad(f, x)
                inner = g.clamp(-eps, eps)
                x = x.detach()
                with torch.no_grad():
                    if sgld_lr > 0:
                        x = (x + sgld_lr * inner).clamp_(-1.0, 1.0)
                    step = lr * inner
                    for _ in range(in_steps):
                        x = (x + step).clamp_(-1.0, 1.0)
            else:
                h = model.stem(from_sym(x))
                e_full = energy_from_logits(model.trunk(h), y)
                e = e_full.detach()
                grads = torch.autograd.grad(-e_full.sum(), [x, h] if sgld_lr > 0 else [h])
                p, x = grads[-1].detach(), x.detach()
                if sgld_lr > 0:
                    with torch.no_grad():
                        x = (x + sgld_lr * grads[0].clamp(-eps, eps)).clamp_(-1.0, 1.0)
                for _ in range(in_steps):
                    x.requires_grad_(True)
                    hh = model.stem(from_sym(x))
                    (gi,) = torch.autograd.grad((hh * p).sum(), x)
                    with torch.no_grad():
                        x = (x.detach() + lr * gi.clamp(-eps, eps)).clamp_(-1.0, 1.0)
            if k == 0:
                trace["energy_start"] = e.mean()
            if sgld_std > 0:
                with torch.no_grad():
                    x = x + sgld_std * torch.randn_like(x, memory_format=torch.contiguous_format)
            _tick(trace)
    trace["steps"] = n_steps
    return x.detach()
