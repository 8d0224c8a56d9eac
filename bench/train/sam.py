"""Sharpness-aware minimisation around any optimiser: SAM (Foret et al., ICLR 2021) and ASAM
(Kwon et al., ICML 2021), as the SADA-JEM base of EB-JDAT trains, as the trainer's hook; the
algorithm and ``optim.sam_*`` are in docs/methods.md, "SAM in the shared trainer".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from bench.core.timing import region
from bench.train.hooks import Hook


class SAMPass(Hook):
    """``optim.sam_rho`` > 0: the gradient again at ``w + e``; the optimiser then steps from ``w``."""

    def __init__(self, opt):
        self.rho, self.adaptive = opt.sam_rho, is_adaptive(opt.sam_adaptive, opt.sam_rho)

    def before_update(self, tr, x: torch.Tensor, y: torch.Tensor, ctx) -> None:
        with region("sam"):
            moves = perturb(tr.params, self.rho, self.adaptive)
            tr.second_pass(x, y, ctx)
            restore(tr.params, moves)


@torch.no_grad()
def perturb(params: list[torch.Tensor], rho: float, adaptive: bool) -> list[torch.Tensor | None]:
    """Move ``params`` to ``w + e`` (in place) from their current ``.grad``; returns a copy of
    each original ``w`` (None where a parameter has no gradient) for :func:`restore`."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return [None] * len(params)
    scaled = [(p.abs() * p.grad if adaptive else p.grad).float() for p in with_grad]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
    scale = rho / (norm + 1e-12)
    originals: list[torch.Tensor | None] = []
    for p in params:
        if p.grad is None:
            originals.append(None)
            continue
        originals.append(p.detach().clone())
        p.add_((p.pow(2) if adaptive else 1.0) * p.grad * scale.to(p.dtype))
    return originals


@torch.no_grad()
def restore(params: list[torch.Tensor], originals: list[torch.Tensor | None]) -> None:
    """Put back the weights :func:`perturb` moved (exactly: copied, not subtracted)."""
    for p, w in zip(params, originals):
        if w is not None:
            p.copy_(w)


def is_adaptive(setting: str, rho: float) -> bool:
    """``optim.sam_adaptive``: on, off, or auto (ASAM when ``rho >= 0.5``, as SADA-JEM decides)."""
    return setting == "on" or (setting == "auto" and rho >= 0.5)


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Train-mode batch norm that normalises with batch statistics but leaves the running
    statistics as they are (momentum 0); every statistic is put back afterwards, so even a
    non-finite activation in the block (0 * NaN = NaN) cannot reach them."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, buffers) in zip(bns, saved):
            m.momentum = momentum
            with torch.no_grad():
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)
