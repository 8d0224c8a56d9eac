"""One optimiser step from the seed's initial weights, and how far two such steps may differ.

The fast path (``train.fast``: channels_last, bf16 autocast, TF32, the fused optimiser, compile)
must train like the plain path (eager fp32, NCHW). Both take step 5 from the same weights, batch
and seed; the loss terms and the parameter update (as one vector) are compared within the
documented tolerances (docs/methods.md, "The fast path"):

| comparison | no attack in the step | a signed-gradient attack in the step |
| --- | --- | --- |
| fp32 NHWC vs plain (``layout``) | loss to 1e-5 x max(1, loss); cosine > 0.9999 | loss to 1e-2 x max(1, loss); cosine > 0.9 |
| bf16 autocast vs fp32 (``bf16``) | loss within 0.5 %; cosine > 0.99 | loss within 0.5 %; cosine > 0.9 |

and the update's norm within 10 % either way. A step "has an attack" when it enters the
``attack`` timing region (every attack in ``bench/attacks`` does): rounding flips the sign of
near-zero input gradients there, so the adversarial examples, and with them the update, move a
little. ``tests/test_fast_path.py`` and `bench doctor` both use this module.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.config import RunConfig
from bench.core.device import precision, resolve_device, training_precision
from bench.core.timing import measure_regions
from bench.data import load_run_data
from bench.models import build_model
from bench.train.trainer import Trainer
from methods import get_method

STEP = 5  # the global step taken (its seed and batch); the learning rate is step 0's


@dataclass(frozen=True)
class Tolerance:
    """How far a step on a changed path may move from the reference step:
    ``|loss - ref| <= loss_abs * max(1, |ref|) + loss_rel * |ref|``, update cosine > ``cos_min``,
    update norm ratio strictly inside ``norm_ratio``."""

    loss_abs: float = 0.0
    loss_rel: float = 0.0
    cos_min: float = 0.0
    norm_ratio: tuple[float, float] = (0.9, 1.1)

    def loss_bound(self, ref: float) -> float:
        return self.loss_abs * max(1.0, abs(ref)) + self.loss_rel * abs(ref)


TOLERANCES: dict[tuple[str, bool], Tolerance] = {  # (comparison, the step has an attack)
    ("layout", False): Tolerance(loss_abs=1e-5, cos_min=0.9999),
    ("layout", True): Tolerance(loss_abs=1e-2, cos_min=0.9),
    ("bf16", False): Tolerance(loss_rel=5e-3, cos_min=0.99),
    ("bf16", True): Tolerance(loss_rel=5e-3, cos_min=0.9),
}


def tolerance(comparison: str, attacked: bool) -> Tolerance:
    return TOLERANCES[(comparison, attacked)]


def path_tolerance(trainer: Trainer, attacked: bool) -> Tolerance:
    """The tolerance of ``trainer``'s path against full fp32 (or of a compiled step against an eager
    one on that path): the bf16 row when its matmuls and convolutions run in reduced precision
    (bf16 autocast; TF32, whose rounding is finer than bf16's, is bounded by the same row), else
    the layout row (channels_last, fused optimiser, fused kernels: rounding order only)."""
    reduced = trainer.use_amp or (
        trainer.device.type == "cuda" and training_precision(trainer.cfg.train).tf32
    )
    return tolerance("bf16" if reduced else "layout", attacked)


@dataclass
class StepResult:
    terms: dict[str, float]  # the loss and every term the method returned, read back
    update: torch.Tensor  # the parameter update, flattened, fp32, on the CPU
    attacked: bool  # the step ran an attack (entered the "attack" timing region)
    logged: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # the terms as the trainer returned them (on the device)


def build_trainer(cfg: RunConfig, run_dir: str | Path, data: Any = None) -> Trainer:
    """A trainer for ``cfg`` with the seed's initial weights, as `bench run` builds it."""
    device = resolve_device(cfg.device)
    data = data if data is not None else load_run_data(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes).to(device)
    method = get_method(cfg.method).from_dict(cfg.method_cfg)
    method.setup(model, data, device)
    return Trainer(cfg, model, method, data, device, run_dir, show_progress=False)


def take_step(trainer: Trainer, step: int = STEP) -> StepResult:
    """One optimiser step in train mode under the precision flags `bench run` trains with."""
    trainer.model.train()
    trainer.set_lr(0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with (
        precision(training_precision(trainer.cfg.train)),
        measure_regions(trainer.device) as regions,
    ):
        logged = trainer.train_step(step)
    update = torch.cat(
        [(p.detach() - q).flatten().float() for p, q in zip(trainer.model.parameters(), before)]
    )
    terms = {k: float(v.float().mean()) for k, v in logged.items()}
    return StepResult(terms, update.cpu(), "attack" in regions, logged)


def step_from_seed(cfg: RunConfig, data: Any = None, step: int = STEP) -> StepResult:
    with tempfile.TemporaryDirectory() as tmp:
        return take_step(build_trainer(cfg, tmp, data), step)


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(u, v, dim=0))


@dataclass
class Verdict:
    passed: bool
    detail: str
    values: dict[str, Any]


def compare(ref: StepResult, other: StepResult, tol: Tolerance) -> Verdict:
    """Whether ``other`` trains like ``ref`` within ``tol``: the same terms, the loss, the update's
    direction (cosine) and size (norm ratio)."""
    if ref.terms.keys() != other.terms.keys():
        return Verdict(
            False,
            f"the steps return different terms: {sorted(ref.terms)} vs {sorted(other.terms)}",
            {},
        )
    loss, loss_other = ref.terms["loss"], other.terms["loss"]
    ref_norm = float(ref.update.norm())
    cos = cosine(ref.update, other.update)
    ratio = float(other.update.norm()) / ref_norm if ref_norm > 0 else math.nan
    diff, bound = abs(loss_other - loss), tol.loss_bound(loss)
    values = {
        "loss": loss,
        "loss_other": loss_other,
        "loss_diff": diff,
        "loss_bound": bound,
        "cosine": cos,
        "cosine_min": tol.cos_min,
        "norm_ratio": ratio,
        "norm_ratio_bounds": list(tol.norm_ratio),
    }
    ok = {
        "loss": diff <= bound,
        "cosine": cos > tol.cos_min,
        "norm ratio": tol.norm_ratio[0] < ratio < tol.norm_ratio[1],
    }  # NaN fails each comparison
    detail = (
        f"loss {loss:.6g} vs {loss_other:.6g} (|diff| {diff:.2g}, bound {bound:.2g}); update cosine "
        f"{cos:.6f} (> {tol.cos_min}); norm ratio {ratio:.4f}"
    )
    bad = [k for k, good in ok.items() if not good]
    if bad:
        detail = f"outside the tolerance ({', '.join(bad)}): {detail}"
    return Verdict(not bad, detail, values)
