"""Protocols: named, documented bundles of metric settings. Every stored number carries one.

``quick`` is the end-of-run check of `bench run`: clean accuracy and PGD-20 (eps 8/255,
alpha 2/255, pixel units, [0, 1] inputs, random start, no test-time noise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.errors import BenchError
from metrics.base import METRICS, EvalContext


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> settings


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(p: Protocol) -> Protocol:
    PROTOCOLS[p.name] = p
    return p


register_protocol(
    Protocol(
        name="quick",
        description="clean accuracy + l-inf PGD-20 (eps 8/255, alpha 2/255, pixel units, random start), "
        "[0, 1] inputs, no test-time noise",
        metrics={
            "clean": {},
            "pgd": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 20, "restarts": 1, "norm": "Linf"},
        },
    )
)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise BenchError(f"unknown protocol {name!r}; choose one of: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def evaluate(model, data, protocol: str, n_examples: int, ctx: EvalContext,
             metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the protocol's metrics; returns ``{metric: {numbers..., protocol, settings, n_examples}}``."""
    proto = get_protocol(protocol)
    names = metrics or list(proto.metrics)
    results: dict[str, dict[str, Any]] = {}
    was_training = model.training
    model.eval()
    try:
        for name in names:
            fn = METRICS.get(name)
            settings = {**proto.metrics.get(name, {}), "n_examples": n_examples}
            t0 = time.perf_counter()
            out = fn(model, data, settings, ctx)
            results[name] = {
                **out,
                "protocol": proto.name,
                "settings": settings,
                "seconds": round(time.perf_counter() - t0, 3),
                "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
    finally:
        model.train(was_training)
    return results
