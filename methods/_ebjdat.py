"""EB-JDAT's config and its bases (``methods/ebjdat.yaml``), beside the step in ``methods/ebjdat.py``;
docs/methods.md has every setting and switch."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.attacks.ebjdat import ATTACK_IMPLS, EPS_UNITS
from bench.core.config import check_settings
from bench.core.errors import BenchError
from bench.sampling.sampler import SamplerConfig
from methods._energy import PxBatchConfig
from methods._settings import file_entries, sampler_of, settings

# base -> the method that trains EB-JDAT on it: `ebjdat` (JEM++ base), `ebjdat-<base>`
METHOD_OF: dict[str, str] = {entry["base"]: name for name, entry in file_entries("ebjdat").items()}
DEFAULT_BASE = "jem++"
WEIGHTS = ("px_weight", "ce_weight", "align_weight", "adv_weight")


def check_base(name: str) -> None:
    if name not in METHOD_OF:
        raise BenchError(f"unknown EB-JDAT base {name!r}; choose one of: {', '.join(METHOD_OF)}")


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
    sampler: SamplerConfig = field(default_factory=lambda: sampler_of("ebjdat"))

    def __post_init__(self):
        super().__post_init__()
        check_base(self.base)
        choices = {"eps_units": EPS_UNITS, "attack_mode": ("eval", "train")}
        choices.update(adv_energy_sign=(1.0, -1.0), align_pair=("other", "source"))
        nonnegative = ("attack_steps", "eps", "alpha", "grid_size", *WEIGHTS, "energy_l2")
        choices["attack_impl"] = ATTACK_IMPLS
        check_settings(self, "method.", choices=choices, minimum=dict.fromkeys(nonnegative, 0))

    @property
    def steps(self) -> int:
        """The attack's step count: ``attack_steps``, or the sampler's ``in_steps`` when 0."""
        return self.attack_steps or self.sampler.in_steps


def base_defaults(base: str) -> EBJDATConfig:
    """EB-JDAT's config on ``base``: the base's loss weights, p(x) batch and sampler."""
    check_base(base)
    name = METHOD_OF[base]
    return EBJDATConfig(base=base, sampler=sampler_of(name), **settings(name)["method"])
