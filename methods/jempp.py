"""``jem++``: JEM++ (Yang & Ji, ICCV 2021): the JEM objective of ``methods/_energy.py`` with PYLD
negatives from an informative replay buffer. Its settings are in ``methods/jempp.yaml``;
docs/methods.md gives the reference, each setting and the switches."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.sampling.sampler import SamplerConfig
from methods._energy import JEMFamily, JEMFamilyConfig
from methods._settings import sampler_of, settings
from methods.base import register_method


@dataclass
class JEMPPConfig(JEMFamilyConfig):
    sampler: SamplerConfig = field(default_factory=lambda: sampler_of("jem++"))


@register_method("jem++")
class JEMPP(JEMFamily):
    Config = JEMPPConfig
    reference = "Yang & Ji 2021, JEM++: CE + p(x) by PYLD (10x5) from an informative replay buffer"
    run_defaults, presets = settings("jem++")["run"], settings("jem++")["presets"]
