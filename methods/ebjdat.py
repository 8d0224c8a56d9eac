"""``ebjdat``: Energy-Based Joint Distribution Adversarial Training (Jiang et al., CVPR 2026,
"Your Classifier Can Do More"), as the authors' released code (``jkcjkc/EB-JDAT``) computes it.

Per step, with ``x_u`` (ctx.extra[0], labels unused) and ``(x, y)`` two independent, augmented,
noised training batches, and E(x) = -logsumexp f(x):

1. ``px    = mean E(x_u) - mean E(x_hat)``, x_hat from the base's sampler and replay buffer;
2. ``ce    = CE(f(x), y)``;
3. x_adv from :func:`bench.attacks.ebjdat.ebjdat_attack` on (x, y) (model in eval mode);
4. ``align = s * (mean E(x_u) - mean E(x_adv))`` (s = ``adv_energy_sign``; +1 in the code);
5. ``adv   = CE(f(x_adv), y)``;
6. loss = px_weight * px + ce_weight * ce + align_weight * align + adv_weight * adv (the trainer sums them).

Order and modes follow the reference loop exactly, because batch-norm statistics depend on them:
every loss-term forward runs in train mode on its own batch (never one concatenated batch):
x_u -> the sampler's forwards -> x_hat -> x -> the attack (eval mode: running statistics) ->
x_u again -> x_adv (align) -> x_adv again (adv CE). The duplicated forwards are the reference's
(they move the running statistics the next attack and the evaluation use).

Bases are rows of :data:`BASES` (a table, not branches): each brings the reference's loss
weights, sampler and run settings (optimiser, schedule, batch, data noise, network). Run
settings belong to the run config, which is resolved before the method's own settings, so each
base is registered as a method name whose ``run_defaults`` are that base's: ``ebjdat`` (JEM++
base), ``ebjdat-jem`` (JEM base) and ``ebjdat-sada-jem`` (SADA-JEM base: ASAM around SGD, an
un-augmented p(x) batch of 64 beside a labelled batch of 128; the paper's best numbers).
``method.base`` records the base and must match the method name (a mismatch is refused with the name to use, rather than
silently mixing one base's sampler with another's optimiser; every run setting stays
overridable with --set). A new base is one more row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bench.attacks.ebjdat import ATTACK_IMPLS, EPS_UNITS, ebjdat_attack
from bench.config import update_dataclass
from bench.errors import BenchError
from bench.models.base import energy_from_logits
from bench.sampling.sampler import ContrastiveSampler, SamplerConfig
from bench.sampling.owner import SamplerOwner
from methods.base import BatchSpec, register_method


@dataclass(frozen=True)
class Base:
    """One EB-JDAT base: the reference's weights, sampler and run settings for it."""

    name: str
    script: str  # the authors' script it follows
    summary: str  # one line for `bench list methods`
    weights: tuple[float, float, float, float]  # px, ce, align, adv
    sampler: dict[str, Any]  # SamplerConfig values
    run: dict[str, Any]  # run-config sections (optim, data, model, train)
    px_batch: dict[str, Any] = field(default_factory=dict)  # px_batch_size / px_augment / px_noise_std


BASES: dict[str, Base] = {
    "jem++": Base(
        name="jem++",
        script="EB-JDAT-JEM++/train_jempp.py + train.sh",
        summary="p(x) by PYLD (10x5) from an informative buffer, SGD 0.01",
        weights=(1.0, 1.0, 0.1, 1.0),
        sampler=dict(kind="pyld", steps=10, in_steps=5, pyld_lr=0.2, eps=1.0, step_size=0.0, noise_std=0.0,
                     mode="train", buffer_size=10000, reinit_freq=0.05, init="informative",
                     fit_augment=True, fit_noise_std=0.03),
        run={
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 4e-4, "warmup_steps": 1000,
                      "schedule": "step", "milestones": [40, 80, 120], "gamma": 0.2},
            "data": {"batch_size": 64, "noise_std": 0.015, "augment": True, "pad_mode": "reflect"},  # 0.03 on [-1, 1]
            "model": {"norm": "batch", "bn_momentum": 0.9, "activation": "leaky_relu"},
            "train": {"epochs": 150},
        },
    ),
    "jem": Base(
        name="jem",
        script="EB-JDAT-JEM/train_wrn_ebm.py + train.sh",
        summary="p(x) by SGLD (10 steps) from a uniform buffer, Adam 1e-5",
        weights=(0.45, 0.45, 0.05, 0.45),
        sampler=dict(kind="sgld", steps=10, step_size=1.0, noise_std=0.01, clamp=False, in_steps=5,
                     mode="eval", buffer_size=10000, reinit_freq=0.05, init="uniform"),
        run={
            "optim": {"name": "adam", "lr": 1e-5, "weight_decay": 0.0, "warmup_steps": 1000,
                      "schedule": "step", "milestones": [160, 180], "gamma": 0.3},
            "data": {"batch_size": 128, "noise_std": 0.015, "augment": True, "pad_mode": "reflect"},
            "model": {"norm": "none", "activation": "leaky_relu"},
            "train": {"epochs": 200},
        },
    ),
    "sada-jem": Base(
        name="sada-jem",
        script="EB-JDAT-SADAJEM/train_sadajem.py + train.sh (sampler and ASAM as sndnyang/SADAJEM)",
        summary="p(x) by clamped gradient ascent (10 steps) from an informative buffer, ASAM (rho 2) around SGD 0.01",
        weights=(1.0, 1.0, 0.1, 1.0),
        # x <- clamp(x + 1 * clamp(grad, -1, 1), -1, 1), no noise, batch norm in train mode
        sampler=dict(kind="sgld", steps=10, step_size=1.0, noise_std=0.0, clamp=True, grad_clamp=1.0, in_steps=5,
                     mode="train", buffer_size=10000, reinit_freq=0.05, init="informative",
                     fit_augment=True, fit_noise_std=0.03),
        run={
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "warmup_steps": 1000,
                      "schedule": "step", "milestones": [50, 100, 150], "gamma": 0.2,
                      "sam_rho": 2.0, "sam_adaptive": "on"},
            # the labelled batch: 128, augmented, no noise (it drives the epoch: 390 steps on CIFAR-10)
            "data": {"batch_size": 128, "noise_std": 0.0, "augment": True, "pad_mode": "reflect"},
            "model": {"norm": "batch", "bn_momentum": 0.9, "activation": "leaky_relu"},
            "train": {"epochs": 200},
        },
        # the p(x) batch: 64, not augmented, noise 0.03 on [-1, 1]
        px_batch={"px_batch_size": 64, "px_augment": "off", "px_noise_std": 0.015},
    ),
}

# bases the paper reports that are not implemented yet, and what they need
PLANNED_BASES: dict[str, str] = {}

DEFAULT_BASE = "jem++"


def method_name(base: str) -> str:
    return "ebjdat" if base == DEFAULT_BASE else f"ebjdat-{base}"


def get_base(name: str) -> Base:
    if name in BASES:
        return BASES[name]
    if name in PLANNED_BASES:
        raise BenchError(f"EB-JDAT base {name!r} is not implemented yet ({PLANNED_BASES[name]}); "
                         f"choose one of: {', '.join(BASES)}")
    raise BenchError(f"unknown EB-JDAT base {name!r}; choose one of: {', '.join(BASES)}")


@dataclass
class EBJDATConfig:
    """Defaults here are the JEM++ base's; ``make_config`` starts from the chosen base's row."""

    base: str = DEFAULT_BASE
    px_weight: float = 1.0  # weight of the p(x) contrastive term
    ce_weight: float = 1.0  # weight of CE(f(x), y)
    align_weight: float = 0.1  # weight of the "alignment" term
    adv_weight: float = 1.0  # weight of CE(f(x_adv), y)
    # the attack (bench.attacks.ebjdat)
    eps: float = 8 / 255  # in eps_units
    alpha: float = 2 / 255  # in eps_units
    eps_units: str = "sym"  # sym: the reference's [-1, 1] scale (= eps/2 in pixels) | pixel
    attack_steps: int = 0  # 0: tied to sampler.in_steps, as the reference (5)
    project: bool = False  # project onto the eps-ball (the reference: range clamp only)
    attack_mode: str = "eval"  # model mode during the attack (the reference: eval)
    adv_energy_sign: float = 1.0  # +1: the code (ascend the class logit); -1: the JEM-convention reading
    align_pair: str = "other"  # other: x_u as the alignment's clean side (the reference) | source: x
    energy_l2: float = 0.0  # >0: + energy_l2 * (mean E(x_u)^2 + mean E(x_hat)^2); the reference: off
    grid_size: int = 64  # replay-buffer entries in the PNG written with each checkpoint (0: none)
    attack_impl: str = "batched"  # batched | reference (the published 2-image loop; same result, for bench perf)
    # the p(x) batch x_u (the labelled batch follows data.*)
    px_batch_size: int = 0  # 0: data.batch_size
    px_augment: str = "same"  # same (as data.augment) | on | off
    px_noise_std: float = -1.0  # pixel units; < 0: data.noise_std
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(**BASES[DEFAULT_BASE].sampler))

    def __post_init__(self):
        get_base(self.base)
        if self.eps_units not in EPS_UNITS:
            raise BenchError(f"method.eps_units={self.eps_units!r} is not valid; choose sym or pixel")
        if self.attack_mode not in ("train", "eval"):
            raise BenchError(f"method.attack_mode={self.attack_mode!r} is not valid; choose eval or train")
        if self.adv_energy_sign not in (1.0, -1.0):
            raise BenchError(f"method.adv_energy_sign must be 1 or -1, got {self.adv_energy_sign}")
        if self.align_pair not in ("other", "source"):
            raise BenchError(f"method.align_pair={self.align_pair!r} is not valid; choose other or source")
        if self.attack_steps < 0 or self.eps < 0 or self.alpha < 0:
            raise BenchError("method.attack_steps, method.eps and method.alpha must be >= 0")
        if min(self.px_weight, self.ce_weight, self.align_weight, self.adv_weight, self.energy_l2) < 0:
            raise BenchError("the loss weights method.*_weight and method.energy_l2 must be >= 0")
        if self.attack_impl not in ATTACK_IMPLS:
            raise BenchError(f"method.attack_impl={self.attack_impl!r} is not valid; choose batched or reference")
        if self.grid_size < 0:
            raise BenchError(f"method.grid_size must be >= 0, got {self.grid_size}")
        if self.px_augment not in ("same", "on", "off"):
            raise BenchError(f"method.px_augment={self.px_augment!r} is not valid; choose same, on or off")
        if self.px_batch_size < 0 or self.px_noise_std >= 1:
            raise BenchError("method.px_batch_size must be >= 0 and method.px_noise_std < 1 (pixel units)")

    @property
    def steps(self) -> int:
        """The attack's step count: ``attack_steps``, or the sampler's ``in_steps`` when 0."""
        return self.attack_steps or self.sampler.in_steps


def base_defaults(base: str) -> EBJDATConfig:
    b = get_base(base)
    px_weight, ce_weight, align_weight, adv_weight = b.weights
    return EBJDATConfig(base=b.name, px_weight=px_weight, ce_weight=ce_weight, align_weight=align_weight,
                        adv_weight=adv_weight, sampler=SamplerConfig(**b.sampler), **b.px_batch)


class EBJDAT(SamplerOwner):
    Config = EBJDATConfig
    extra_batches = 1  # x_u, the independent batch of the energy terms
    reference_loop_settings = ("method.attack_impl=reference",)  # bench perf's reference-style loop
    base_name = DEFAULT_BASE

    @classmethod
    def make_config(cls, values: dict[str, Any]) -> EBJDATConfig:
        base = values.get("base", cls.base_name)
        get_base(str(base))
        if base != cls.base_name:
            raise BenchError(
                f"method.base={base} brings that base's optimiser, schedule and network as well: "
                f"run --method {method_name(str(base))} instead of --method {cls.name}")
        return update_dataclass(base_defaults(cls.base_name), values)

    def batch_specs(self) -> list[BatchSpec]:
        """The labelled batch as ``data.*`` says; the p(x) batch x_u with its own size,
        augmentation and noise when the base (or --set method.px_*) gives them."""
        c = self.cfg
        px = BatchSpec(batch_size=c.px_batch_size or None,
                       batch_size_setting="method.px_batch_size" if c.px_batch_size else "data.batch_size",
                       augment=None if c.px_augment == "same" else c.px_augment == "on",
                       noise_std=c.px_noise_std if c.px_noise_std >= 0 else None)
        return [BatchSpec(), px]

    # -- lifecycle ----------------------------------------------------------------------
    def setup(self, model, data, device):
        if self.cfg.px_weight > 0 or self.cfg.energy_l2 > 0:
            self.sampler = ContrastiveSampler(self.cfg.sampler, data, device)

    def loss_weights(self):
        c = self.cfg
        w = {"px": c.px_weight, "ce": c.ce_weight, "align": c.align_weight, "adv": c.adv_weight}
        if c.energy_l2 > 0:
            w["energy_sq"] = c.energy_l2
        return w

    # -- one step -----------------------------------------------------------------------
    def training_step(self, model, x, y, ctx):
        c = self.cfg
        if not ctx.extra:
            raise BenchError("ebjdat needs the independent x_u batch (extra_batches = 1); run it under the shared Trainer")
        x_u = ctx.extra[0][0]
        zero = x.new_zeros(())
        out: dict[str, torch.Tensor] = {}
        with ctx.autocast():
            # 1. p(x): E(x_u), the sampler (its own forwards), E(x_hat)
            need_px = c.px_weight > 0 or c.energy_l2 > 0
            if need_px:
                e_u = energy_from_logits(model(x_u))
                x_hat = ctx.reuse("x_hat", lambda: self.sampler.draw(model, x_u.shape[0]))
                e_hat = energy_from_logits(model(x_hat))
                out["px"] = e_u.mean() - e_hat.mean()
                out["energy_sq"] = e_u.pow(2).mean() + e_hat.pow(2).mean()
                out["e_data"], out["e_sample"] = e_u.mean().detach(), e_hat.mean().detach()
                out["e_gap"] = out["e_sample"] - out["e_data"]
                if "energy_start" in self.sampler.last:
                    out["e_start"] = self.sampler.last["energy_start"].detach().float()
            else:
                out["px"] = zero
            # 2. CE on the labelled batch
            logits = model(x)
            out["ce"] = F.cross_entropy(logits.float(), y)
            out["acc"] = (logits.argmax(1) == y).float().mean().detach()
            out["e_clean"] = energy_from_logits(logits).mean().detach()
            # 3-5. the attack, the alignment term and CE on x_adv
            if c.align_weight > 0 or c.adv_weight > 0:
                x_adv = ctx.reuse("x_adv", lambda: ebjdat_attack(
                    model, x, y, eps=c.eps, alpha=c.alpha, steps=c.steps, eps_units=c.eps_units, project=c.project,
                    energy_sign=c.adv_energy_sign, mode=c.attack_mode, impl=c.attack_impl))
                e_pos = energy_from_logits(model(x_u if c.align_pair == "other" else x))
                e_adv = energy_from_logits(model(x_adv))
                out["align"] = c.adv_energy_sign * (e_pos.mean() - e_adv.mean())
                logits_adv = model(x_adv)
                out["adv"] = F.cross_entropy(logits_adv.float(), y)
                out["e_adv"] = e_adv.mean().detach()
                out["acc_adv"] = (logits_adv.argmax(1) == y).float().mean().detach()
                out["e_adv_gap"] = out["e_adv"] - out["e_clean"]  # E(x_adv) - E(its clean source)
                out["adv_linf"] = (x_adv - x).abs().amax().detach()  # pixel units
            else:
                out["align"], out["adv"] = zero, zero
        return out


def _register_bases() -> None:
    for base in BASES:
        b = BASES[base]
        cls = type(
            f"EBJDAT_{base.replace('+', 'p').replace('-', '_')}",
            (EBJDAT,),
            {
                "base_name": base,
                "run_defaults": b.run,
                "reference": f"Jiang et al. 2026, EB-JDAT ({base} base): CE + p(x) + attack terms; {b.summary}",
                "__doc__": f"EB-JDAT on the {base} base (see methods/ebjdat.py).",
                "__module__": __name__,
            },
        )
        register_method(method_name(base))(cls)


_register_bases()
