"""The EB-JDAT training-time attack (Jiang et al., CVPR 2026; ``sampleXadv`` in the authors' code): a
random start ``clamp(x + U(-eps, eps))``, then ``steps`` signed steps ascending
``s * sum_i f(x')_i[y_i] + sum_i ||z_i / (||z_i|| + 1e-10) - z'_i / (||z'_i|| + 1e-10)||^2`` (``z``, ``z'``
the clean and perturbed logits, ``s = energy_sign``), with the range clamp only (the eps-ball
projection only with ``project``), model in eval mode. The iterates live on the reference's [-1, 1]
scale, where eps and alpha are stated by default (``eps_units="sym"``); the model takes [0, 1] pixels.
With eval-mode batch norm, attacking the whole batch at once equals the reference's loop over
2-image chunks. The objective, switches and defaults: docs/methods.md (EB-JDAT).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.attacks.pgd import as_iterate, input_grad, project_linf
from bench.core.errors import BenchError
from bench.core.timing import region
from bench.models.base import from_sym, model_mode, to_sym

EPS_UNITS = {"sym": 1.0, "pixel": 2.0}  # factor from the stated unit to the [-1, 1] scale


def to_sym_units(value: float, units: str) -> float:
    """An eps or step size stated in ``units`` (sym | pixel), on the [-1, 1] scale."""
    if units not in EPS_UNITS:
        raise BenchError(
            f"eps_units={units!r} is not valid; choose sym (the reference's [-1, 1] scale) or pixel"
        )
    return value * EPS_UNITS[units]


def l2_normalise(z: torch.Tensor) -> torch.Tensor:
    """Each row divided by (its L2 norm + 1e-10), as the reference's feature-difference helper."""
    return z / (z.norm(dim=1, keepdim=True) + 1e-10)


def logit_direction_distance(z_clean: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """sum_i || z_i/(||z_i||+1e-10) - z'_i/(||z'_i||+1e-10) ||^2 (a scalar)."""
    return (l2_normalise(z_clean.float()) - l2_normalise(z_adv.float())).pow(2).sum()


def ebjdat_objective(
    logits_adv: torch.Tensor, y: torch.Tensor, z_clean: torch.Tensor, energy_sign: float = 1.0
) -> torch.Tensor:
    """The quantity each step ascends: s * sum of class logits + the logit-direction distance."""
    logits_adv = logits_adv.float()
    class_logit = logits_adv.gather(1, y.view(-1, 1)).sum()
    return energy_sign * class_logit + logit_direction_distance(z_clean, logits_adv)


def ebjdat_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 5,
    eps_units: str = "sym",
    project: bool = False,
    energy_sign: float = 1.0,
    mode: str | None = "eval",
    impl: str = "batched",
) -> torch.Tensor:
    """Return the EB-JDAT adversarial batch for ``(x, y)``, ``x`` in [0, 1] pixels (detached, in [0, 1]).

    The iterates live on the [-1, 1] scale, as in the reference (the same arithmetic, so the
    same sign decisions); the model is called on the matching [0, 1] pixels.

    ``impl="reference"`` runs the published loop's schedule instead, for speed comparisons
    (`bench perf`): chunks of 2 images one after another, the clean logits recomputed in every
    step (three network passes per step). Same result, several times slower.
    """
    if steps < 0:
        raise BenchError(f"attack steps must be >= 0, got {steps}")
    if impl not in ATTACK_IMPLS:
        raise BenchError(
            f"attack impl {impl!r} is not valid; choose one of: {', '.join(ATTACK_IMPLS)}"
        )
    with region("attack"):
        return ATTACK_IMPLS[impl](
            model,
            x,
            y,
            eps_s=to_sym_units(eps, eps_units),
            alpha_s=to_sym_units(alpha, eps_units),
            steps=steps,
            project=project,
            energy_sign=energy_sign,
            mode=mode,
        )


def _ascend(model, xs, y, clean_logits, *, eps_s, alpha_s, steps, project, energy_sign):
    """From symmetric-scale ``xs``: the random start, then the signed steps; ``clean_logits()``
    gives ``z`` at each step."""
    start = torch.empty_like(xs, memory_format=torch.contiguous_format).uniform_(-eps_s, eps_s)
    xa = (xs + start).clamp_(-1.0, 1.0)  # the start drawn as on NCHW
    for _ in range(steps):
        xa.requires_grad_(True)
        z_clean = clean_logits()
        g = input_grad(ebjdat_objective(model(from_sym(xa)), y, z_clean, energy_sign), xa)
        xa = xa.detach() + alpha_s * g.sign()
        xa = project_linf(xa, xs, eps_s, -1.0, 1.0) if project else xa.clamp_(-1.0, 1.0)
    return xa.detach()


def _attack_batched(model, x, y, *, mode, **kw) -> torch.Tensor:
    # fp32 iterates; only the model's forwards run under the caller's autocast
    xs = to_sym(as_iterate(x))
    with model_mode(model, mode), torch.enable_grad():
        with torch.no_grad():
            z_clean = model(from_sym(xs)).float()
        return from_sym(_ascend(model, xs, y, lambda: z_clean, **kw))


def _attack_reference_loop(model, x, y, *, mode, chunk: int = 2, **kw) -> torch.Tensor:
    """The published schedule: 2-image chunks in sequence, clean logits recomputed each step."""
    out = []
    with model_mode(model, mode), torch.enable_grad():
        for xc, yc in zip(to_sym(as_iterate(x)).split(chunk), y.split(chunk)):
            out.append(_ascend(model, xc, yc, lambda: model(from_sym(xc)).float(), **kw))
    return from_sym(torch.cat(out))


ATTACK_IMPLS = {"batched": _attack_batched, "reference": _attack_reference_loop}
