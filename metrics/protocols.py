"""The protocol catalogue: named, documented bundles of metric settings (every stored number carries
one), as data. Each protocol's ``description`` states its exact settings (`bench list protocols`);
a metric in ``optional`` is skipped, with the reason, when its inputs are missing. The engine that
runs them is metrics/engine.py; see docs/evaluation.md."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

from bench.core.registry import Registry, module_provider


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> settings
    # skipped (with the reason) when their inputs are unavailable
    optional: frozenset[str] = frozenset()
    input_noise: float = 0.0  # std of Gaussian noise on the [0, 1] test images (pixel units)
    # False: the noise is drawn once per image, before any metric (the attacked function is deterministic);
    # True: drawn afresh inside every forward pass, a randomised defence (attack it with EOT)
    noise_per_forward: bool = False
    # the module that registered it (filled by register_protocol): a plugin's protocol is recorded by package
    module: str = field(default="", compare=False)


# a plugin's entry point (group trilemma_bench.protocols) names a Protocol, or a module calling register_protocol
PROTOCOLS: Registry = Registry("protocol", group="trilemma_bench.protocols", packages=("metrics",))


def register_protocol(p: Protocol, replace: bool = False) -> Protocol:
    """Register ``p`` under its name; a second protocol of a name already taken is refused unless
    ``replace`` (a plugin cannot silently redefine ``standard``). Returns the registered protocol, which
    names the calling module in ``module`` (a run's record lists a plugin's protocol by its package)."""
    if not p.module:
        p = dataclasses.replace(p, module=str(sys._getframe(1).f_globals.get("__name__", "")))
    PROTOCOLS.register(p.name, p, replace=replace)
    return p


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)


def protocol_provider(name: str) -> dict[str, Any] | None:
    """Which package provides protocol ``name`` (None for trilemma-bench's own): the module that
    registered it, or else the module of the entry point that named it."""
    module = get_protocol(name).module or PROTOCOLS.origins.get(name, "")
    return module_provider(module) if module else None


PGD20 = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 20, "restarts": 1, "norm": "Linf"}

register_protocol(
    Protocol(
        name="quick",
        description="clean accuracy + l-inf PGD-20 (eps 8/255, alpha 2/255, pixel units, random start), "
        "[0, 1] inputs, no test-time noise",
        metrics={"clean": {}, "pgd": dict(PGD20)},
    )
)

register_protocol(
    Protocol(
        name="standard",
        description=(
            "RobustBench style: [0, 1] inputs, no test-time noise, l-inf eps 8/255 in pixels. clean accuracy; "
            "PGD-20 (alpha 2/255, random start); official AutoAttack 'standard' (pyautoattack: APGD-CE 100 it, "
            "APGD-T 9 targets x 100 it, FAB-T 9 targets x 100 it, Square 5000 queries); energy E(x)=-logsumexp f(x) "
            "of clean, PGD-20 adversarial (same attack) and generated samples with gaps, W1 distances and a histogram; "
            "ECE (15 equal-width bins) + reliability diagram; when generated samples and Inception weights exist: "
            "FID / KID (torch-fidelity, InceptionV3 2048-d pool3) vs the train split and IS (10 splits; n/a without "
            "the 1008-way fc layer)"
        ),
        metrics={
            "clean": {},
            "pgd": dict(PGD20),
            "autoattack": {"version": "standard", "norm": "Linf", "eps": 8 / 255},
            "calibration": {"bins": 15},
            "fid": {"real_split": "train", "n_samples": 10000},
            "kid": {"real_split": "train", "n_samples": 10000},
            "is": {"n_samples": 10000, "splits": 10},
            # after fid: its generated samples are reused, not drawn again
            "energy": {"attack": dict(PGD20)},
        },
        optional=frozenset({"fid", "kid", "is"}),
    )
)

PGD10 = {**PGD20, "steps": 10}
register_protocol(
    Protocol(
        name="demo",
        description=(
            "what `make demo` evaluates in a few minutes on a CPU, each number labelled with its n: clean accuracy; "
            "l-inf PGD-10 (eps 8/255, alpha 2/255, random start); KID (unbiased at small n, unlike FID) of 100 "
            "generated samples vs 100 train images (torch-fidelity, InceptionV3 pool3; needs the weights of `bench "
            "fid-weights`); energy of clean, PGD-10 adversarial and those generated samples. [0, 1] inputs, no "
            "test-time noise. For comparisons use `standard`"
        ),
        metrics={
            "clean": {},
            "pgd": dict(PGD10),
            "kid": {"real_split": "train", "n_samples": 100, "n_real": 100, "kid_subset_size": 100},
            "energy": {"attack": dict(PGD10), "n_generated": 100},  # after kid: the same samples
        },
        optional=frozenset({"kid"}),
    )
)

PAPER_PGD = {"eps": 4 / 255, "alpha": 0.5 / 255, "steps": 20, "restarts": 1, "norm": "Linf"}
register_protocol(
    Protocol(
        name="paper",
        description=(
            "the EB-JDAT authors' eval script (eval_jempp.py, test.sh) with the official library's components: "
            "test images + N(0, 0.03^2) noise on the [-1, 1] scale (std 0.015 in pixels, drawn once per image with "
            "the seed, clamped to [0, 1]); eps 8/255 on the [-1, 1] scale = 4/255 in pixels; PGD-20 step 1/255 on "
            "[-1, 1] = 0.5/255 pixels, random start; AutoAttack reduced as in their vendored copy: APGD-CE 20 it "
            "-> untargeted APGD-DLR 20 it -> Square 5000 queries, 1 restart each (their FAB clamps to [0, 1] on "
            "[-1, 1] images and contributes nothing, so it is left out); energy and ECE on the same noisy images; "
            "FID/IS on the top 90% most confident generated samples per predicted class vs their real set (CIFAR-10: "
            "train+test; CIFAR-100: train), computed correctly (their uint8-as-float pixel wrap-around "
            "is not reproduced)"
        ),
        metrics={
            "clean": {},
            "pgd": dict(PAPER_PGD),
            "autoattack": {
                "version": "custom",
                "attacks": ["apgd-ce", "apgd-dlr", "square"],
                "norm": "Linf",
                "eps": 4 / 255,
                "apgd_iter": 20,
                "apgd_restarts": 1,
                "square_queries": 5000,
            },
            "calibration": {"bins": 15},
            "fid": {"real_split": "authors", "n_samples": 10000, "select_top_ratio": 0.9},
            "is": {"n_samples": 10000, "splits": 10, "select_top_ratio": 0.9},
            "energy": {"attack": dict(PAPER_PGD)},
        },
        optional=frozenset({"fid", "is"}),
        input_noise=0.015,
    )
)


register_protocol(
    Protocol(
        name="paper-eot",
        description=(
            "the paper protocol's settings (eps 4/255 and PGD-20 step 0.5/255 in pixels, random start; AutoAttack "
            "APGD 20 iterations) on a randomised deployment: the N(0, 0.015^2) pixel noise is drawn "
            "afresh inside every "
            "forward pass (clamped to [0, 1]), and the attacks average over it (expectation over transformation): "
            "PGD-20 with EOT 20, AutoAttack 'rand' (APGD-CE, APGD-DLR, 20 iterations, EOT 20, 1 restart). The gap to "
            "`paper` (noise drawn once per image) is the robustness the noise gives against an attacker that averages"
        ),
        metrics={
            "clean": {},
            "pgd": {**PAPER_PGD, "eot": 20},
            "autoattack": {
                "version": "rand",
                "norm": "Linf",
                "eps": 4 / 255,
                "apgd_iter": 20,
                "apgd_restarts": 1,
            },
        },
        input_noise=0.015,
        noise_per_forward=True,
    )
)


register_protocol(
    Protocol(
        name="custom",
        description=(
            "ad-hoc evaluations: the metrics named with --metrics, each with its own defaults and the --set "
            "settings given; [0, 1] inputs, no test-time noise"
        ),
        metrics={},
    )
)
