"""``ebjdat``: Energy-Based Joint Distribution Adversarial Training (Jiang et al., CVPR 2026), as
the authors' released code (``jkcjkc/EB-JDAT``) computes it: the shared p(x) term, ``ce`` on the
labelled batch, then the EB-JDAT attack's ``align`` and ``adv`` terms, with every forward in the
reference's order and mode (batch-norm statistics depend on it). Its bases are data
(``methods/ebjdat.yaml``; the config: ``methods/_ebjdat.py``), each registered as its own method
because it brings run settings: ``ebjdat`` (JEM++ base), ``ebjdat-jem``, ``ebjdat-sada-jem``.
docs/methods.md has the formulas, every setting and switch.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from bench.attacks.ebjdat import ebjdat_attack
from bench.core.config import update_dataclass
from bench.core.errors import BenchError
from bench.models.base import energy_from_logits
from bench.sampling.sampler import ContrastiveSampler
from methods._ebjdat import DEFAULT_BASE, METHOD_OF, EBJDATConfig, base_defaults, check_base
from methods._energy import SamplerOwner, px_term
from methods._settings import settings
from methods.base import BatchSpec, register_method


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
                f"run --method {METHOD_OF[base]} instead of --method {cls.name}"
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
        x_u = ctx.extra_batches[0][0]  # the independent p(x) batch (extra_batches = 1)
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


for _base, _name in METHOD_OF.items():  # one registered method per base
    _s = settings(_name)
    register_method(_name)(
        type(
            f"EBJDAT_{_base.replace('+', 'p').replace('-', '_')}",
            (EBJDAT,),
            {
                "base_name": _base,
                "run_defaults": _s["run"],
                "presets": _s["presets"],
                "__module__": __name__,
                "reference": f"Jiang et al. 2026, EB-JDAT ({_base} base): CE + p(x) + attack terms; {_s['summary']}",
                "__doc__": f"EB-JDAT on the {_base} base (methods/ebjdat.yaml).",
            },
        )
    )
