"""What the energy-model family (``jem``, ``jem++``, ``sada-jem``, the EB-JDAT methods) shares: the
contrastive p(x) term, the sampler-owning base class and the JEM objective; a shared module, not a
method. docs/methods.md (``jem``) gives the objective, the order of the network passes and the
logged energies; the samplers live in ``bench/sampling/``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.core.errors import BenchError
from bench.models.base import energy_from_logits
from bench.sampling.images import save_grid
from bench.sampling.langevin import from_sym
from bench.sampling.sampler import ContrastiveSampler, SamplerConfig
from methods.base import BatchSpec, Method


def px_term(
    model,
    x_u: torch.Tensor,
    draw: Callable[[], torch.Tensor],
    sampler: ContrastiveSampler,
    e_data: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The contrastive p(x) term: E(x_u) (unless given as ``e_data``), then ``draw()`` -> x_hat, then E(x_hat).

    Returns ``px`` (mean E(x_u) - mean E(x_hat)), ``energy_sq`` (mean E(x_u)^2 + mean E(x_hat)^2,
    the penalty's term) and the logged ``e_data``, ``e_sample``, ``e_gap`` and ``e_start``."""
    e_u = energy_from_logits(model(x_u)) if e_data is None else e_data
    x_hat = draw()
    e_hat = energy_from_logits(model(x_hat))
    ed, es = e_u.mean(), e_hat.mean()
    out = {
        "px": ed - es,
        "energy_sq": e_u.pow(2).mean() + e_hat.pow(2).mean(),
        "e_data": ed.detach(),
        "e_sample": es.detach(),
        "e_gap": (es - ed).detach(),
    }
    if "energy_start" in sampler.last:
        out["e_start"] = sampler.last["energy_start"].detach().float()
    return out


@dataclass
class PxBatchConfig:
    """Settings of a p(x) batch drawn apart from the labelled one (``ctx.extra_batches[0]``); the
    defaults follow ``data.*``."""

    px_batch_size: int = 0  # 0: data.batch_size
    px_augment: str = "same"  # same (as data.augment) | on | off
    px_noise_std: float = -1.0  # pixel units; < 0: data.noise_std

    def __post_init__(self):
        if self.px_augment not in ("same", "on", "off"):
            raise BenchError(
                f"method.px_augment={self.px_augment!r} is not valid; choose same, on or off"
            )
        if self.px_batch_size < 0 or self.px_noise_std >= 1:
            raise BenchError(
                "method.px_batch_size must be >= 0 and method.px_noise_std < 1 (pixel units)"
            )

    def px_batch_spec(self) -> BatchSpec:
        return BatchSpec(
            batch_size=self.px_batch_size or None,
            batch_size_setting="method.px_batch_size" if self.px_batch_size else "data.batch_size",
            augment=None if self.px_augment == "same" else self.px_augment == "on",
            noise_std=self.px_noise_std if self.px_noise_std >= 0 else None,
        )


class SamplerOwner(Method):
    """Base of every method that owns a :class:`ContrastiveSampler` (built in the subclass's ``setup``).

    Gives the method its checkpointed state (the replay buffer) and, with each checkpoint, a PNG
    grid of buffer entries spread over the whole buffer (``method.grid_size`` of them; 0 = none),
    recorded as the run's ``buffer_grid`` artifact."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.sampler: ContrastiveSampler | None = None
        self._artifacts: dict[str, str] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state or {}).get("sampler")
        if self.sampler is not None and saved is not None:
            self.sampler.load_state_dict(saved)

    def reseed_for_rank(self, rank: int) -> None:
        """Each rank's replay buffer starts from its own draws (its first fill again, from this rank's seed)."""
        if self.sampler is not None and self.sampler.buffer is not None:
            buf = self.sampler.buffer
            buf.x.copy_(buf.initial_fill())

    def on_checkpoint(self, run_dir, step: int) -> None:
        if self.cfg.grid_size <= 0 or self.sampler is None or self.sampler.buffer is None:
            return
        buf = self.sampler.buffer
        n = min(self.cfg.grid_size, buf.size)
        idx = torch.linspace(0, buf.size - 1, n).round().long().to(buf.x.device)  # all class blocks
        rel = Path("samples") / f"buffer-step-{step:08d}.png"
        save_grid(
            from_sym(buf.x[idx]).clamp(0, 1), Path(run_dir) / rel, nrow=max(1, round(math.sqrt(n)))
        )
        self._artifacts["buffer_grid"] = str(rel)

    def artifacts(self) -> dict[str, str]:
        return dict(self._artifacts)


@dataclass
class JEMFamilyConfig:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    px_weight: float = 1.0  # p(x) term (the references' p_x_weight)
    ce_weight: float = 1.0  # p(y|x) term (p_y_given_x_weight)
    # >0: + energy_l2 * mean(E(x_u)^2 + E(x_hat)^2); the JEM author suggests ~0.1
    energy_l2: float = 0.0
    # p(x) on its own batch (the references); false: reuse the labelled batch
    separate_px_batch: bool = True
    grid_size: int = 64  # replay-buffer entries in the PNG written with each checkpoint (0: none)

    def __post_init__(self):
        if self.px_weight < 0 or self.ce_weight < 0 or self.energy_l2 < 0:
            raise BenchError("method.px_weight, method.ce_weight and method.energy_l2 must be >= 0")
        if self.grid_size < 0:
            raise BenchError(f"method.grid_size must be >= 0, got {self.grid_size}")
        # tolerate a plain mapping from callers that skip from_dict
        if isinstance(self.sampler, dict):
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
                x_u = ctx.extra_batches[0][0]
                terms = px_term(
                    model, x_u, lambda: self._draw(model, x_u.shape[0], ctx), self.sampler
                )
                logits = model(x)
            else:
                logits = model(x)
                terms = px_term(
                    model,
                    x,
                    lambda: self._draw(model, x.shape[0], ctx),
                    self.sampler,
                    e_data=energy_from_logits(logits),
                )
        out = {
            "px": terms["px"],
            "ce": F.cross_entropy(logits.float(), y),
            **{k: terms[k] for k in ("e_data", "e_sample", "e_gap")},
            "acc": (logits.argmax(1) == y).float().mean().detach(),
        }
        # only when used: squared energies would tighten the guard's bound on E
        if self.cfg.energy_l2 > 0:
            out["energy_sq"] = terms["energy_sq"]
        if "e_start" in terms:
            out["e_start"] = terms["e_start"]
        return out

    def _draw(self, model, n: int, ctx) -> torch.Tensor:
        """Negative samples; with a class-conditional buffer, for uniformly drawn labels (sampling
        x|y with E(x, y), as JEM's class-conditional buffer option does)."""

        def draw() -> torch.Tensor:
            y_q = (
                torch.randint(0, ctx.num_classes, (n,), device=ctx.device)
                if self.cfg.sampler.conditional
                else None
            )
            return self.sampler.draw(model, n, y=y_q)

        return ctx.reuse("x_hat", draw)  # SAM's second pass draws neither labels nor samples again
