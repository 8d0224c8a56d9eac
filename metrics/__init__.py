"""Evaluation metrics (plugins) and protocols (named bundles of metric settings).

A metric is a function ``metric(model, data, settings, ctx) -> dict`` registered with
``@register_metric("name", headlines=..., summary=...)`` or through the entry-point group
``trilemma_bench.metrics``. It returns named numbers plus ``n_examples``; the evaluation layer
adds the protocol and settings, and the tables read the metric's :class:`Presentation`. A
protocol is a :class:`Protocol` registered with ``register_protocol`` or through the group
``trilemma_bench.protocols``.
"""

from metrics.base import METRICS, EvalContext, Headline, Presentation, presentation, register_metric
from metrics.protocols import (
    PROTOCOLS,
    MetricUnavailable,
    Protocol,
    evaluate,
    get_protocol,
    register_protocol,
)

__all__ = [
    "METRICS",
    "EvalContext",
    "Headline",
    "MetricUnavailable",
    "PROTOCOLS",
    "Presentation",
    "Protocol",
    "evaluate",
    "get_protocol",
    "presentation",
    "register_metric",
    "register_protocol",
]
