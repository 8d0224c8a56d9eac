"""What the adversarially trained methods share: the checks of their PGD settings and the AWP
variant of a method (docs/methods.md)."""

from __future__ import annotations

from typing import Any

from bench.core.config import deep_merge
from bench.core.errors import BenchError
from methods.base import Method, register_method


def check_pgd_settings(cfg: Any) -> None:
    """The checks every PGD-trained method's config shares (``attack_mode``, ``steps``, ``eps``,
    ``alpha``, ``eps_warmup_epochs``): one line naming the setting."""
    if cfg.attack_mode not in ("train", "eval"):
        raise BenchError(
            f"method.attack_mode={cfg.attack_mode!r} is not valid; choose train or eval"
        )
    if cfg.steps < 1 or cfg.eps <= 0 or cfg.alpha <= 0 or cfg.eps_warmup_epochs < 0:
        raise BenchError(
            "method.steps must be >= 1, method.eps and method.alpha positive, "
            "method.eps_warmup_epochs >= 0"
        )


def awp_variant(base: type[Method], name: str, label: str) -> type[Method]:
    """Register ``name``: method ``base`` unchanged (loss, attack, settings, preset variants) with the
    trainer's adversarial weight perturbation on at the paper's budget (Wu et al. 2020; ``bench/train/awp.py``).
    ``label`` is the paper's name for it (``"TRADES-AWP"``). Any method takes the same option with
    ``--set optim.awp_gamma=5e-3``; a variant gives the combination its own row and name."""
    from bench.train import awp

    cls = type(
        f"{base.__name__}AWP",
        (base,),
        {
            "__module__": base.__module__,
            "__doc__": f"{label}: {base.name} with adversarial weight perturbation (gamma {awp.PAPER_GAMMA:g}).",
            "reference": f"Wu et al. 2020, Adversarial Weight Perturbation (gamma {awp.PAPER_GAMMA:g}) "
            f"around {base.name} ({label})",
            "run_defaults": deep_merge(
                base.run_defaults, {"optim": {"awp_gamma": awp.PAPER_GAMMA}}
            ),
        },
    )
    return register_method(name)(cls)
