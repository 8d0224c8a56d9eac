"""``sada-jem``: SADA-JEM (Yang, Su & Ji, CVPR 2023, "Towards Bridging the Performance Gaps of
Joint Energy-based Models"; ``sndnyang/SADAJEM``) on its own: EB-JDAT's SADA-JEM base
(``ebjdat-sada-jem``) without the adversarial terms. No attack runs at all.

The JEM objective (``methods/_energy.py``, the code ``jem++`` runs) with SADA-JEM's three changes:
negatives by 10 steps of clamped gradient ascent ``x <- clamp(x + clamp(grad, -1, 1), -1, 1)``, no
noise, train mode, from an informative replay buffer (the ``sada-jem`` entry of
``bench/sampling/references.yaml``); ASAM (rho 2) around SGD (the shared trainer's SAM: the second
pass reuses the step's x_hat and freezes batch-norm statistics); and a p(x) batch of its own, 64
images, not augmented, noised (0.03 on [-1, 1]), beside the labelled batch of 128 (augmented, no
noise). The run settings are the base's (``ebjdat-sada-jem`` in ``methods/ebjdat.yaml``), written once: SGD
0.01, momentum 0.9, wd 5e-4, warm-up 1000, 200 epochs x0.2 at 50/100/150, WRN-28-10 with batch norm
(momentum 0.9), LeakyReLU 0.2; the divergence bound is SADA-JEM's own 1e5.
SADA-JEM's own script differs (SGD 0.1, x0.2 at 60/120/180, 5 sampler steps, no data noise):
docs/methods.md gives its --set line.
"""

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
