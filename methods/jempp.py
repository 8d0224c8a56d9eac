"""``jem++``: JEM++ (Yang & Ji, ICCV 2021, "JEM++: Improved Techniques for Training JEM").

The JEM loss (``methods/_energy.py``) with two changes to the negative samples:
PYLD ("proximal YOPO Langevin": 10 outer full-gradient steps, each followed by 5 first-layer-only
steps of 0.2 with the gradient clamped to +-1 and the image range clamped after every sub-step,
no noise), and informative initialisation (fresh chains drawn from per-class Gaussians fitted on
the augmented, noised training images). The network keeps batch norm (momentum 0.9, PyTorch
convention) and stays in train mode while sampling, as the released code does.

Reference settings (sndnyang/JEMPP README / scripts/jempp_cifar10.sh and train_jempp.py
defaults): SGD lr 0.1, momentum 0.9, weight decay 4e-4, 1000 warm-up iterations, x0.2 at
epochs 50, 100 and 125, 150 epochs, batch 64, data noise 0.03 on [-1, 1] (``data.noise_std``
0.015 in pixel units), WRN-28-10 with batch norm, LeakyReLU 0.2, buffer 10,000, reinit 0.05.
EB-JDAT's copy uses lr 0.01 (``--set optim.lr=0.01``).
"""

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
