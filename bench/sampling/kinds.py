"""The sampler registry: ``method.sampler.kind`` names an entry of ``SAMPLERS``, a built-in kind
below or a plugin's (README, "A sampler kind").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.core.registry import Registry
from bench.sampling.langevin import pyld, sgld


@dataclass(frozen=True)
class SamplerKind:
    name: str
    run: Callable
    reference: str = ""  # the references.yaml entry holding this kind's reference step settings
    step_fields: tuple[str, ...] = ()  # the SamplerConfig fields that are this kind's step settings


SAMPLERS: Registry = Registry(
    "sampler",
    group="trilemma_bench.samplers",
    accepts=lambda obj: isinstance(obj, SamplerKind),
    expected="a sampler kind: decorate the function with @register_sampler(NAME) and name NAME as the "
    "entry point, or point the entry point at the module",
)


def register_sampler(name: str, reference: str = "", step_fields: tuple[str, ...] = ()):
    """Decorator on a ``run(cfg, model, xs, y, steps, mode, trace)`` function returning the moved ``xs``.

    ``cfg``: the ``method.sampler`` settings (a SamplerConfig); ``xs``: the chains' starts on the
    [-1, 1] scale; ``y``: labels for a conditional draw, else None; ``mode``: the model's mode while
    sampling. ``trace`` is None or a dict the caller reads: put the mean energy of the starts (a
    0-d device tensor, not read back) under ``"energy_start"`` (the training log's ``e_start``,
    which the divergence guard watches), and call ``trace["on_step"]()``, when present, once per
    step (the progress bar). ``reference`` names the ``references.yaml`` entry whose
    ``step_fields`` settings a switch to this kind takes."""

    def add(run: Callable) -> Callable:
        SAMPLERS.register(name, SamplerKind(name, run, reference, step_fields))
        return run

    return add


@register_sampler("sgld", reference="jem", step_fields=("step_size", "noise_std", "grad_clamp"))
def run_sgld(cfg, model, xs, y, steps, mode, trace):
    """SGLD (JEM): ``steps`` Langevin steps of ``step_size`` with ``noise_std`` noise."""
    return sgld(
        model,
        xs,
        steps=steps,
        step_size=cfg.step_size,
        noise_std=cfg.noise_std,
        clamp=cfg.clamp,
        y=y,
        mode=mode,
        grad_clamp=cfg.grad_clamp,
        trace=trace,
    )


@register_sampler(
    "pyld", reference="jem++", step_fields=("in_steps", "pyld_lr", "eps", "step_size", "noise_std")
)
def run_pyld(cfg, model, xs, y, steps, mode, trace):
    """PYLD (JEM++): ``steps`` outer steps, each with ``in_steps`` first-layer-only steps."""
    return pyld(
        model,
        xs,
        n_steps=steps,
        in_steps=cfg.in_steps,
        lr=cfg.pyld_lr,
        eps=cfg.eps,
        sgld_lr=cfg.step_size,
        sgld_std=cfg.noise_std,
        y=y,
        mode=mode,
        fast=None if cfg.fast else False,
        trace=trace,
    )
