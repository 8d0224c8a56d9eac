"""Evaluation metrics (plugins) and protocols (named bundles of metric settings): the registries
and the engine that runs a protocol's metrics; see docs/evaluation.md and the README's plugin
examples."""

from metrics.base import (
    METRICS,
    EvalContext,
    Headline,
    MetricUnavailable,
    Presentation,
    presentation,
    register_metric,
)
from metrics.engine import evaluate
from metrics.protocols import PROTOCOLS, Protocol, get_protocol, register_protocol

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
