"""``ebjdat``: Energy-Based Joint Distribution Adversarial Training (Jiang et al., CVPR 2026), as
the authors' released code (``jkcjkc/EB-JDAT``) computes it: the shared p(x) term, ``ce`` on the
labelled batch, then the EB-JDAT attack's ``align`` and ``adv`` terms, with every forward in the
reference's order and mode (batch-norm statistics depend on it). Its bases are data
(``methods/ebjdat_bases.yaml``), each registered as its own method because it brings run
settings: ``ebjdat`` (JEM++ base), ``ebjdat-jem``, ``ebjdat-sada-jem``. docs/methods.md has the
formulas, every setting and switch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn.functional as F
import yaml

from bench.attacks.ebjdat import ATTACK_IMPLS, EPS_UNITS, ebjdat_attack
from bench.core.config import check_settings, update_dataclass
from bench.core.errors import BenchError
from bench.models.base import energy_from_logits
from bench.sampling.sampler import ContrastiveSampler, SamplerConfig, reference_sampler
from methods._energy import PxBatchConfig, SamplerOwner, px_term
from methods.base import BatchSpec, register_method

BASES: dict[str, dict[str, Any]] = yaml.safe_load(
    Path(__file__).with_name("ebjdat_bases.yaml").read_text()
)
DEFAULT_BASE = "jem++"


def method_name(base: str) -> str:
    return "ebjdat" if base == DEFAULT_BASE else f"ebjdat-{base}"


def check_base(name: str) -> None:
    if name not in BASES:
        raise BenchError(f"unknown EB-JDAT base {name!r}; choose one of: {', '.join(BASES)}")


@dataclass
class EBJDATConfig(PxBatchConfig):
    """Defaults here are the JEM++ base's; ``make_config`` starts from the chosen base's entry."""

    base: str = DEFAULT_BASE
    px_weight: float = 1.0  # weight of the p(x) contrastive term
    ce_weight: float = 1.0  # weight of CE(f(x), y)
    align_weight: float = 0.1  # weight of the "alignment" term
    adv_weight: float = 1.0  # weight of CE(f(x_adv), y)
    eps: float = 8 / 255  # in eps_units
    alpha: float = 2 / 255  # in eps_units
    eps_units: str = "sym"  # sym: the reference's [-1, 1] scale (= eps/2 in pixels) | pixel
    attack_steps: int = 0  # 0: tied to sampler.in_steps, as the reference (5)
    project: bool = False  # project onto the eps-ball (the reference: range clamp only)
    attack_mode: str = "eval"  # model mode during the attack (the reference: eval)
    # +1: the code (ascend the class logit); -1: the JEM-convention reading
    adv_energy_sign: float = 1.0
    # other: x_u as the alignment's clean side (the reference) | source: x
    align_pair: str = "other"
    # >0: + energy_l2 * (mean E(x_u)^2 + mean E(x_hat)^2); the reference: off
    energy_l2: float = 0.0
    grid_size: int = 64  # replay-buffer entries in the PNG written with each checkpoint (0: none)
    # batched | reference (the published 2-image loop; same result, for bench perf)
    attack_impl: str = "batched"
    sampler: SamplerConfig = field(default_factory=lambda: reference_sampler("jem++"))

    def __post_init__(self):
        super().__post_init__()
        check_base(self.base)
        check_settings(
            self,
            "method.",
            choices={
                "eps_units": EPS_UNITS,
                "attack_mode": ("eval", "train"),
                "adv_energy_sign": (1.0, -1.0),
                "align_pair": ("other", "source"),
                "attack_impl": ATTACK_IMPLS,
            },
            minimum=dict.fromkeys(
                (
                    "attack_steps",
                    "eps",
                    "alpha",
                    "grid_size",
                    "px_weight",
                    "ce_weight",
                    "align_weight",
                    "adv_weight",
                    "energy_l2",
                ),
                0,
            ),
        )

    @property
    def steps(self) -> int:
        """The attack's step count: ``attack_steps``, or the sampler's ``in_steps`` when 0."""
        return self.attack_steps or self.sampler.in_steps


def base_defaults(base: str) -> EBJDATConfig:
    """EB-JDAT's config on ``base``: the base's loss weights, p(x) batch and sampler."""
    check_base(base)
    sampler = dict(BASES[base]["sampler"])
    return EBJDATConfig(
        base=base,
        sampler=reference_sampler(sampler.pop("reference"), **sampler),
        **BASES[base]["method"],
    )


class EBJDAT(SamplerOwner):
    Config = EBJDATConfig
    extra_batches = 1  # x_u, the independent batch of the energy terms
    reference_loop_settings = ("method.attack_impl=reference",)  # bench perf's reference-style loop
    base_name = DEFAULT_BASE

    @classmethod
    def make_config(cls, values: dict[str, Any]) -> EBJDATConfig:
        base = str(values.get("base", cls.base_name))
        if base != cls.base_name:
            check_base(base)
            raise BenchError(
                f"method.base={base} brings that base's optimiser, schedule and network as well: "
                f"run --method {method_name(base)} instead of --method {cls.name}"
            )
        return update_dataclass(base_defaults(cls.base_name), values)

    def batch_specs(self) -> list[BatchSpec]:
        """The labelled batch as ``data.*`` says; the p(x) batch x_u as ``method.px_*`` say."""
        return [BatchSpec(), self.cfg.px_batch_spec()]

    def setup(self, model, data, device):
        if self.cfg.px_weight > 0 or self.cfg.energy_l2 > 0:
            self.sampler = ContrastiveSampler(self.cfg.sampler, data, device)

    def loss_weights(self):
        c = self.cfg
        w = {"px": c.px_weight, "ce": c.ce_weight, "align": c.align_weight, "adv": c.adv_weight}
        return {**w, "energy_sq": c.energy_l2} if c.energy_l2 > 0 else w

    def training_step(self, model, x, y, ctx):
        c = self.cfg
        x_u = ctx.extra[0][0]  # the independent p(x) batch (extra_batches = 1)
        zero, out = x.new_zeros(()), {}
        with ctx.autocast():
            if c.px_weight > 0 or c.energy_l2 > 0:
                out.update(
                    px_term(
                        model,
                        x_u,
                        lambda: ctx.reuse("x_hat", lambda: self.sampler.draw(model, x_u.shape[0])),
                        self.sampler,
                    )
                )
            else:
                out["px"] = zero
            logits = model(x)
            out["ce"] = F.cross_entropy(logits.float(), y)
            out["acc"] = (logits.argmax(1) == y).float().mean().detach()
            out["e_clean"] = energy_from_logits(logits).mean().detach()
            if c.align_weight > 0 or c.adv_weight > 0:
                x_adv = ctx.reuse(
                    "x_adv",
                    lambda: ebjdat_attack(
                        model,
                        x,
                        y,
                        eps=c.eps,
                        alpha=c.alpha,
                        steps=c.steps,
                        eps_units=c.eps_units,
                        project=c.project,
                        energy_sign=c.adv_energy_sign,
                        mode=c.attack_mode,
                        impl=c.attack_impl,
                    ),
                )
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


for _base, _b in BASES.items():  # one registered method per base
    register_method(method_name(_base))(
        type(
            f"EBJDAT_{_base.replace('+', 'p').replace('-', '_')}",
            (EBJDAT,),
            {
                "base_name": _base,
                "run_defaults": _b["run"],
                "__module__": __name__,
                "reference": f"Jiang et al. 2026, EB-JDAT ({_base} base): CE + p(x) + attack terms; {_b['summary']}",
                "__doc__": f"EB-JDAT on the {_base} base (methods/ebjdat_bases.yaml).",
            },
        )
    )
