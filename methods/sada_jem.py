"""``sada-jem``: SADA-JEM (Yang, Su & Ji, CVPR 2023): the JEM objective of ``methods/_energy.py``
with clamped-gradient negatives, ASAM and a p(x) batch of its own; EB-JDAT's SADA-JEM base
without the attack. Its settings are in ``methods/sada_jem.yaml`` (the run settings: the base's,
in ``methods/ebjdat.yaml``); docs/methods.md gives the reference, each setting and the switches."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.sampling.sampler import SamplerConfig
from methods._energy import JEMFamily, JEMFamilyConfig, PxBatchConfig
from methods._settings import sampler_of, settings
from methods.base import BatchSpec, register_method


@dataclass
class SADAJEMConfig(JEMFamilyConfig, PxBatchConfig):
    px_batch_size: int = 64  # the p(x) batch (the labelled one is data.batch_size, 128)
    px_augment: str = "off"  # the p(x) batch is not augmented
    px_noise_std: float = 0.015  # pixel units: 0.03 on [-1, 1]
    sampler: SamplerConfig = field(default_factory=lambda: sampler_of("sada-jem"))

    def __post_init__(self):
        JEMFamilyConfig.__post_init__(self)
        PxBatchConfig.__post_init__(self)


@register_method("sada-jem")
class SADAJEM(JEMFamily):
    Config = SADAJEMConfig
    reference = (
        "Yang et al. 2023, SADA-JEM: CE + p(x) by clamped gradient ascent (10 steps) from an "
        "informative buffer, ASAM (rho 2), un-augmented p(x) batch"
    )
    run_defaults, presets = settings("sada-jem")["run"], settings("sada-jem")["presets"]

    def batch_specs(self) -> list[BatchSpec]:
        """The labelled batch as ``data.*`` says; the p(x) batch as ``method.px_*`` say."""
        return (
            [BatchSpec(), self.cfg.px_batch_spec()] if self.cfg.separate_px_batch else [BatchSpec()]
        )
