"""``jem``: Joint Energy-based Model (Grathwohl et al., ICLR 2020): the JEM objective of
``methods/_energy.py`` with SGLD negatives from a uniform replay buffer. Its settings are in
``methods/jem.yaml``; docs/methods.md gives the reference, each setting and the switches."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.sampling.sampler import SamplerConfig
from methods._energy import JEMFamily, JEMFamilyConfig
from methods._settings import sampler_of, settings
from methods.base import register_method


@dataclass
class JEMConfig(JEMFamilyConfig):
    sampler: SamplerConfig = field(default_factory=lambda: sampler_of("jem"))


@register_method("jem")
class JEM(JEMFamily):
    Config = JEMConfig
    reference = (
        "Grathwohl et al. 2020, JEM: CE + p(x) by SGLD (20 steps) from a uniform replay buffer"
    )
    run_defaults, presets = settings("jem")["run"], settings("jem")["presets"]
