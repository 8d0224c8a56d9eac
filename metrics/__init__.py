"""Evaluation metrics (plugins) and protocols (named bundles of metric settings).

A metric is a function ``metric(model, data, settings, ctx) -> dict`` registered with
``@register_metric("name")`` or through the entry-point group ``trilemma_bench.metrics``. It
returns named numbers plus ``n_examples``; the evaluation layer adds the protocol and settings.
"""

from metrics.base import METRICS, EvalContext, register_metric
from metrics.protocols import PROTOCOLS, Protocol, evaluate, get_protocol

__all__ = ["METRICS", "EvalContext", "register_metric", "PROTOCOLS", "Protocol", "evaluate", "get_protocol"]
