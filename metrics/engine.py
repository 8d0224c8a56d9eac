"""The evaluation engine: a protocol's metrics run on a model, each result stamped with its protocol,
settings, n, time and precision flags. What the protocols are is metrics/protocols.py; how a run is
evaluated into its record is bench/run/evaluation.py (see docs/evaluation.md)."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from bench.core.device import current_precision
from bench.core.errors import BenchError
from bench.core.record_reading import check_name
from bench.core.registry import provider
from metrics.base import (
    COMMON_SETTINGS,
    METRICS,
    EvalContext,
    MetricUnavailable,
    Setting,
    metric_schema,
)
from metrics.guards import apply_ordering
from metrics.intervals import accuracy_interval
from metrics.protocols import Protocol, get_protocol, protocol_provider

ANY = Setting(Any)  # an undeclared setting of a plugin metric that declares none


class TestTimeNoise(torch.nn.Module):
    """``model`` behind N(0, std^2) noise on its [0, 1] input, drawn afresh on every forward pass."""

    def __init__(self, model: torch.nn.Module, std: float):
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = self.std * torch.randn_like(x, memory_format=torch.contiguous_format)
        return self.model((x + noise).clamp(0.0, 1.0))


def noisy_view(data, std: float, seed: int):
    """A shallow copy of ``data`` whose test images are float [0, 1] with N(0, std^2) noise added once."""
    g = torch.Generator().manual_seed(2_000_003 + seed)
    x = data.x_test.float().div(255.0)
    x = (x + std * torch.randn(x.shape, generator=g)).clamp_(0.0, 1.0)
    view = copy.copy(data)
    view.x_test_clean = data.x_test
    view.x_test = x
    return view


def metric_settings(
    proto: Protocol,
    name: str,
    n_examples: int | None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    settings = {**proto.metrics.get(name, {})}
    if n_examples is not None:
        settings["n_examples"] = int(n_examples)  # checked by check_request: a whole number
    settings.update((overrides or {}).get(name, {}))
    if proto.input_noise:
        settings["input_noise"] = proto.input_noise
        settings["input_noise_drawn"] = (
            "every forward pass" if proto.noise_per_forward else "once per image"
        )
    return settings


def check_request(
    protocol: str,
    metrics: list[str] | None,
    n_examples: int | None = None,
    overrides: dict | None = None,
) -> list[str]:
    """The metrics an evaluation runs, once every setting it would store (the protocol's, ``n``,
    ``--set``) has been checked against the metric's declared type and range; ``--set`` values are
    converted in place. Needs no model: `bench eval` calls it before loading one."""
    proto = get_protocol(protocol)
    names = list(metrics) if metrics else list(proto.metrics)
    if not names:
        raise BenchError(
            f"protocol {proto.name} has no metrics of its own; name them with --metrics, e.g. "
            "--protocol custom --metrics pgd --set pgd.steps=50"
        )
    if proto.metrics:  # a named protocol: its results must be what it says
        foreign = [m for m in names if m not in proto.metrics]
        if foreign:
            METRICS.get(foreign[0])  # an unknown name fails here, with the known ones
            raise BenchError(
                f"metric {foreign[0]!r} is not part of protocol {proto.name} (it has "
                f"{', '.join(proto.metrics)}); evaluate it with --protocol custom --metrics "
                f"{','.join(foreign)} (its own defaults plus --set)"
            )
    check_protocol_settings(proto, names)
    check_overrides(names, overrides)
    # a stored key must be a plain name (records refuse others on load): refused now, not after
    # the work; each --set value first, so the line names the setting
    for m, settings in (overrides or {}).items():
        for k, v in settings.items():
            check_name(f"{k}={_compact(v)}", f"--set {m}.{k}")
    for key in [proto.name, *(variant_key(m, proto, (overrides or {}).get(m)) for m in names)]:
        check_name(key, "result key")
    if n_examples is not None:
        COMMON_SETTINGS["n_examples"].check(n_examples, "n_examples")
    return names


def preflight(
    protocol: str,
    metrics: list[str] | None,
    ctx: EvalContext,
    n_examples: int | None = None,
    overrides: dict | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(metrics to run, {skipped metric: reason}). Fails with the one-line fix for a metric asked for by name."""
    proto = get_protocol(protocol)
    run, skipped = [], {}
    for name in check_request(protocol, metrics, n_examples, overrides):
        fn = METRICS.get(name)
        check = getattr(fn, "preflight", None)
        if check is not None:
            try:
                check(metric_settings(proto, name, n_examples, overrides), ctx)
            except MetricUnavailable as exc:
                if metrics or name not in proto.optional:
                    raise
                skipped[name] = str(exc)
                continue
        run.append(name)
    return run, skipped


def _compact(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "+".join(_compact(x) for x in v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}={_compact(x)}" for k, x in sorted(v.items())) + "}"
    return str(v)


def variant_key(metric: str, proto: Protocol, overrides: dict[str, Any] | None) -> str:
    """The key a result is stored under: the metric's name for the protocol's own settings, and
    ``metric[key=value,...]`` for settings changed with --set, so that a changed setting is a new
    entry and never replaces the protocol's result."""
    own = proto.metrics.get(metric, {})
    changed = {k: v for k, v in (overrides or {}).items() if k != "n_examples" and own.get(k) != v}
    if not changed:
        return metric
    return f"{metric}[{','.join(f'{k}={_compact(v)}' for k, v in sorted(changed.items()))}]"


def check_protocol_settings(proto: Protocol, names: list[str]) -> None:
    """Refuse a protocol (a plugin's, say) whose settings are out of range or that gives a metric
    a setting it does not read: its results would be stored under settings never applied."""
    COMMON_SETTINGS["input_noise"].check(proto.input_noise, f"protocol {proto.name}'s input_noise")
    for metric in names:
        schema = metric_schema(metric)
        given = proto.metrics.get(metric, {})
        unknown = sorted(set(given) - set(schema)) if schema is not None else []
        if unknown:
            raise BenchError(
                f"protocol {proto.name} gives metric {metric} the setting {unknown[0]!r}, which it does "
                f"not read (its settings: {', '.join(sorted(schema))}); fix the protocol's definition"
            )
        for key, value in given.items():
            (schema or COMMON_SETTINGS).get(key, ANY).check(
                value, f"protocol {proto.name}'s {metric}.{key}"
            )


def check_overrides(names: list[str], overrides: dict[str, dict[str, Any]] | None) -> None:
    """Refuse ``--set METRIC.KEY=...`` items that would be stored without acting: a metric not being
    evaluated, a key the metric does not read (for metrics that declare their settings) or the
    protocol's test-time noise; convert the values of typed settings, refusing a wrong type or a
    value out of the setting's range in one line."""
    for metric, items in (overrides or {}).items():
        METRICS.get(metric)  # an unknown name fails here, with the known ones
        if metric not in names:
            raise BenchError(
                f"--set {metric}.{next(iter(items))}: metric {metric!r} is not evaluated here "
                f"(this evaluation runs {', '.join(names)}); add it with --metrics {metric}"
            )
        schema = metric_schema(metric)
        unknown = sorted(set(items) - set(schema)) if schema is not None else []
        if unknown:
            raise BenchError(
                f"--set {metric}.{unknown[0]}: unknown setting {unknown[0]!r} of metric {metric}; "
                f"its settings: {', '.join(sorted(schema))}"
            )
        if "input_noise" in items:  # the engine adds it from the protocol, not from --set
            raise BenchError(
                f"--set {metric}.input_noise: test-time noise is a protocol's setting, the same for "
                "all its metrics; evaluate with --protocol paper (noise std 0.015) or leave it out"
            )
        for key, value in items.items():
            items[key] = (
                (schema or COMMON_SETTINGS).get(key, ANY).check(value, f"--set {metric}.{key}")
            )


def evaluate(
    model,
    data,
    protocol: str,
    n_examples: int,
    ctx: EvalContext,
    metrics: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    skipped: dict[str, str] | None = None,
    results: dict[str, dict[str, Any]] | None = None,
    announce=None,
) -> dict[str, dict[str, Any]]:
    """Run the protocol's metrics; returns ``{metric: {numbers..., protocol, settings, n_examples}}``.

    ``metrics`` restricts (and, for optional metrics, insists on) a subset; ``overrides`` maps a
    metric to settings replacing the protocol's. Optional metrics whose inputs are unavailable
    are left out of the result and their reasons put into ``skipped``. ``results`` is filled as
    each metric finishes, so a caller keeps the finished ones when a later metric fails or is
    interrupted; ``announce(line)`` is told of each metric as it starts.
    """
    proto = get_protocol(protocol)
    ctx.protocol = proto.name
    names, why = preflight(protocol, metrics, ctx, n_examples, overrides)
    if skipped is not None:
        skipped.update(why)
    if proto.input_noise and proto.noise_per_forward:
        model = TestTimeNoise(model, proto.input_noise)
    elif proto.input_noise:
        data = noisy_view(data, proto.input_noise, ctx.seed)
    results = {} if results is None else results
    # a plugin's protocol or metric: which package (and version) chose the settings, made the number
    proto_prov = {"protocol_provider": p} if (p := protocol_provider(proto.name)) else {}
    was_training = model.training
    model.eval()
    try:
        for name in names:
            if announce is not None:
                announce(f"[{proto.name}] {name} ...")
            fn = METRICS.get(name)
            settings = metric_settings(proto, name, n_examples, overrides)
            t0 = time.perf_counter()
            out = fn(model, data, settings, ctx)
            results[variant_key(name, proto, (overrides or {}).get(name))] = {
                "metric": name,
                **out,
                **_interval(out),
                "protocol": proto.name,
                "settings": settings,
                "seconds": round(time.perf_counter() - t0, 3),
                "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({"provider": p} if (p := provider(fn)) else {}),
                **proto_prov,
                "precision": current_precision(),  # the flags torch held: see bench.core.device
            }
    finally:
        model.train(was_training)
        ctx.adversarial.clear()  # the examples kept for a later metric of this evaluation
    apply_ordering(results)
    return results


def _interval(out: dict[str, Any]) -> dict[str, Any]:
    """``accuracy_ci95``, the 95 % Wilson interval, for a result with an accuracy on n examples."""
    acc, n = out.get("accuracy"), out.get("n_examples")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool) and isinstance(n, int) and n > 0:
        return {"accuracy_ci95": accuracy_interval(float(acc), n)}
    return {}
