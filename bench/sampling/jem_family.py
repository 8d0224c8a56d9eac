"""The JEM-family objective, shared by ``jem``, ``jem++`` (and any later JEM variant).

Per step (Grathwohl et al. 2020; Yang & Ji 2021), with ``x_u`` an independent training batch
for the generative term (the references draw it from a second loader) and ``(x, y)`` the
labelled batch:

    px  = mean E(x_u) - mean E(x_hat)        x_hat from the method's sampler and replay buffer
    ce  = CE(f(x), y)
    loss = px_weight * px + ce_weight * ce [+ energy_l2 * mean(E(x_u)^2 + E(x_hat)^2)]

Order of network passes (it matters for batch-norm running statistics): E(x_u) -> the
sampler's forwards -> E(x_hat) -> f(x), every one in train mode on its own batch except the
sampler's, which run in ``sampler.mode``.

Besides the loss terms a step returns, for the log and for the trainer's divergence guard:
``e_data`` (mean E(x_u)), ``e_sample`` (mean E(x_hat)), ``e_gap`` (= e_sample - e_data),
``e_start`` (mean energy of the chains' starting points) and ``acc`` (with the penalty on,
``energy_sq`` is a loss term). A JEM run that diverges shows it first in
these energies, so the guard sees them every logging window.

The energy penalty is the one the JEM author suggests against divergence (wgrathwohl/JEM
issues 4 and 8, strength about 0.1); off by default and recorded in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from bench.models.base import energy_from_logits
from bench.sampling.sampler import ContrastiveSampler, SamplerConfig
from bench.sampling.owner import SamplerOwner


@dataclass
class JEMFamilyConfig:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    px_weight: float = 1.0  # p(x) term (the references' p_x_weight)
    ce_weight: float = 1.0  # p(y|x) term (p_y_given_x_weight)
    energy_l2: float = 0.0  # >0: + energy_l2 * mean(E(x_u)^2 + E(x_hat)^2); the JEM author suggests ~0.1
    separate_px_batch: bool = True  # p(x) on its own batch (the references); false: reuse the labelled batch
    grid_size: int = 64  # replay-buffer entries in the PNG written with each checkpoint (0: none)

    def __post_init__(self):
        if self.px_weight < 0 or self.ce_weight < 0 or self.energy_l2 < 0:
            raise BenchError("method.px_weight, method.ce_weight and method.energy_l2 must be >= 0")
        if self.grid_size < 0:
            raise BenchError(f"method.grid_size must be >= 0, got {self.grid_size}")
        if isinstance(self.sampler, dict):  # tolerate a plain mapping from callers that skip from_dict
            self.sampler = SamplerConfig(**self.sampler)


class JEMFamily(SamplerOwner):
    """Base class of the JEM-family method plugins: subclasses set ``Config`` and ``run_defaults``."""

    Config = JEMFamilyConfig

    @property
    def extra_batches(self) -> int:  # type: ignore[override]
        return 1 if self.cfg.separate_px_batch else 0

    def setup(self, model, data, device) -> None:
        self.sampler = ContrastiveSampler(self.cfg.sampler, data, device)

    def loss_weights(self) -> dict[str, float]:
        w = {"px": self.cfg.px_weight, "ce": self.cfg.ce_weight}
        if self.cfg.energy_l2 > 0:
            w["energy_sq"] = self.cfg.energy_l2
        return w

    def training_step(self, model, x, y, ctx) -> dict[str, torch.Tensor]:
        if self.sampler is None:
            raise RuntimeError("JEM-family method used before setup()")
        with ctx.autocast():
            if self.cfg.separate_px_batch:
                x_u = ctx.extra[0][0]
                e_data = model.energy(x_u)
                x_hat = self._draw(model, x_u.shape[0], ctx)
                e_sample = model.energy(x_hat)
                logits = model(x)
            else:
                logits = model(x)
                e_data = energy_from_logits(logits)
                x_hat = self._draw(model, x.shape[0], ctx)
                e_sample = model.energy(x_hat)
        ce = F.cross_entropy(logits.float(), y)
        ed, es = e_data.mean(), e_sample.mean()
        terms = {
            "px": ed - es,
            "ce": ce,
            "e_data": ed.detach(),
            "e_sample": es.detach(),
            "e_gap": (es - ed).detach(),
            "acc": (logits.argmax(1) == y).float().mean().detach(),
        }
        if self.cfg.energy_l2 > 0:  # only when used: squared energies would tighten the guard's bound on E
            terms["energy_sq"] = e_data.pow(2).mean() + e_sample.pow(2).mean()
        if "energy_start" in self.sampler.last:
            terms["e_start"] = self.sampler.last["energy_start"].detach().float()
        return terms

    def _draw(self, model, n: int, ctx) -> torch.Tensor:
        """Negative samples; with a class-conditional buffer, for uniformly drawn labels (sampling
        x|y with E(x, y), as JEM's class-conditional buffer option does)."""
        def draw() -> torch.Tensor:
            y_q = torch.randint(0, ctx.num_classes, (n,), device=ctx.device) if self.cfg.sampler.conditional else None
            return self.sampler.draw(model, n, y=y_q)

        return ctx.reuse("x_hat", draw)  # SAM's second pass draws neither labels nor samples again
