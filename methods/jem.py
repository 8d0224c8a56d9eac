"""``jem``: Joint Energy-based Model (Grathwohl et al., ICLR 2020, "Your Classifier is Secretly
an Energy Based Model and You Should Treat it Like One").

Loss per step: ``CE(f(x), y) + mean E(x_u) - mean E(x_hat)``, with x_hat from 20 steps of SGLD
(step 1, noise 0.01 on the [-1, 1] scale, model in eval mode, no clamping) started from a
replay buffer of 10,000 uniform-noise chains, 5% re-initialised per draw
(``methods/_energy.py`` holds the shared objective).

Reference settings (wgrathwohl/JEM README command for CIFAR-10 and train_wrn_ebm.py defaults):
Adam lr 1e-4, no weight decay, 1000 warm-up iterations, batch 64, data noise 0.03 on [-1, 1]
(``data.noise_std`` 0.015 in pixel units), WRN-28-10 without normalisation layers, LeakyReLU 0.2,
150 epochs as the specification says. The script's decay (x0.3 at epochs 160 and 180 of its
default 200) is kept as the schedule, so within 150 epochs the learning rate stays constant
after the warm-up, and ``--set train.epochs=200`` gives the script's run.

Divergence: JEM is known to diverge; ``train.divergence_bound`` is 1e5 here (SADA-JEM's own
threshold on the p(x) loss, 1000x below the reference's |L| > 1e8), applied to every returned
term including the energies. ``method.energy_l2`` (e.g. 0.1) adds the energy penalty the JEM
author suggests; ``--on-divergence rollback`` restarts from the last good checkpoint
(with its replay buffer) at a lower learning rate and a new seed.
"""

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
