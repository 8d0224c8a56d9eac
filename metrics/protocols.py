"""Protocols: named, documented bundles of metric settings. Every stored number carries one.

- ``quick``: the end-of-run check of `bench run` (clean + PGD-20).
- ``standard``: RobustBench-style evaluation ([0, 1] inputs, eps 8/255, official standard
  AutoAttack, no test-time noise) plus clean, PGD-20, energy gaps, calibration and, when
  generated samples and Inception weights are available, FID / KID / IS.
- ``paper``: the EB-JDAT authors' evaluation script reproduced with the official library's
  components (eps 8/255 on the [-1, 1] scale = 4/255 in pixels, N(0, 0.03^2) test-time noise on
  the [-1, 1] scale, their reduced AutoAttack).

Each protocol's ``description`` states its exact settings (`bench list protocols`). A metric
listed in ``optional`` is skipped, with the reason reported, when its inputs (generated samples,
Inception weights) are not available; asked for by name (``--metrics fid``) it fails instead.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.core.config import coerce
from bench.core.errors import BenchError
from bench.core.registry import Registry, module_provider, provider
from metrics.base import METRICS, EvalContext, declared_settings, setting_types
from metrics.guards import apply_ordering
from metrics.intervals import accuracy_interval


class MetricUnavailable(BenchError):
    """A metric's inputs (generated samples, feature-extractor weights, ...) are missing; one line
    says how to fix it."""


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> settings
    optional: frozenset[str] = (
        frozenset()
    )  # skipped (with the reason) when their inputs are unavailable
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
            "energy": {
                "attack": dict(PGD20)
            },  # after fid: its generated samples are reused, not drawn again
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
            "energy": {
                "attack": dict(PGD10),
                "n_generated": 100,
            },  # after kid: the same generated samples
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


class TestTimeNoise(torch.nn.Module):
    """``model`` behind N(0, std^2) noise on its [0, 1] input, drawn afresh on every forward pass."""

    def __init__(self, model: torch.nn.Module, std: float):
        super().__init__()
        self.model, self.std = model, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(
            (x + self.std * torch.randn_like(x, memory_format=torch.contiguous_format)).clamp(
                0.0, 1.0
            )
        )


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)


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
        settings["n_examples"] = n_examples
    settings.update((overrides or {}).get(name, {}))
    if proto.input_noise:
        settings["input_noise"] = proto.input_noise
        settings["input_noise_drawn"] = (
            "every forward pass" if proto.noise_per_forward else "once per image"
        )
    return settings


def preflight(
    protocol: str,
    metrics: list[str] | None,
    ctx: EvalContext,
    n_examples: int | None = None,
    overrides: dict | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(metrics to run, {skipped metric: reason}). Fails with the one-line fix for a metric asked for by name."""
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
    run, skipped = [], {}
    for name in names:
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
    """Refuse a protocol (a plugin's, say) that gives a metric a setting it does not read: its results
    would be stored under settings that were never applied."""
    for metric in names:
        known = declared_settings(metric)
        unknown = sorted(set(proto.metrics.get(metric, {})) - known) if known is not None else []
        if unknown:
            raise BenchError(
                f"protocol {proto.name} gives metric {metric} the setting {unknown[0]!r}, which it does "
                f"not read (its settings: {', '.join(sorted(known))}); fix the protocol's definition"
            )


def check_overrides(names: list[str], overrides: dict[str, dict[str, Any]] | None) -> None:
    """Refuse ``--set METRIC.KEY=...`` items that would be stored without acting: a metric not being
    evaluated, or a key the metric does not read (for metrics that declare their settings); convert
    the values of typed settings, refusing a wrong type in one line."""
    for metric, items in (overrides or {}).items():
        METRICS.get(metric)  # an unknown name fails here, with the known ones
        if metric not in names:
            raise BenchError(
                f"--set {metric}.{next(iter(items))}: metric {metric!r} is not evaluated here "
                f"(this evaluation runs {', '.join(names)}); add it with --metrics {metric}"
            )
        known = declared_settings(metric)
        unknown = sorted(set(items) - known) if known is not None else []
        if unknown:
            raise BenchError(
                f"--set {metric}.{unknown[0]}: unknown setting {unknown[0]!r} of metric {metric}; "
                f"its settings: {', '.join(sorted(known))}"
            )
        for key, kind in setting_types(
            metric
        ).items():  # typed settings: checked and converted here
            if key in items:
                items[key] = coerce(items[key], kind, f"--set {metric}.{key}")


def evaluate(
    model,
    data,
    protocol: str,
    n_examples: int,
    ctx: EvalContext,
    metrics: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    skipped: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the protocol's metrics; returns ``{metric: {numbers..., protocol, settings, n_examples}}``.

    ``metrics`` restricts (and, for optional metrics, insists on) a subset; ``overrides`` maps a
    metric to settings replacing the protocol's. Optional metrics whose inputs are unavailable
    are left out of the result and their reasons put into ``skipped``.
    """
    proto = get_protocol(protocol)
    ctx.extra["protocol"] = proto.name
    names, why = preflight(protocol, metrics, ctx, n_examples, overrides)
    if skipped is not None:
        skipped.update(why)
    if proto.input_noise and proto.noise_per_forward:
        model = TestTimeNoise(model, proto.input_noise)
    elif proto.input_noise:
        data = noisy_view(data, proto.input_noise, ctx.seed)
    results: dict[str, dict[str, Any]] = {}
    proto_prov = protocol_provider(proto.name)
    was_training = model.training
    model.eval()
    try:
        for name in names:
            fn = METRICS.get(name)
            settings = metric_settings(proto, name, n_examples, overrides)
            t0 = time.perf_counter()
            out = fn(model, data, settings, ctx)
            key = variant_key(name, proto, (overrides or {}).get(name))
            results[key] = {
                "metric": name,
                **out,
                **_interval(out),
                "protocol": proto.name,
                "settings": settings,
                "seconds": round(time.perf_counter() - t0, 3),
                "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            prov = provider(
                fn
            )  # a plugin's metric: which package (and version) produced the number
            if prov:
                results[key]["provider"] = prov
            if proto_prov:  # a plugin's protocol: which package chose the settings
                results[key]["protocol_provider"] = proto_prov
    finally:
        model.train(was_training)
        ctx.extra.pop(
            "adversarial", None
        )  # the examples kept for a later metric (metrics.base.keep_adversarial)
    apply_ordering(results)
    return results


def _interval(out: dict[str, Any]) -> dict[str, Any]:
    """``accuracy_ci95``, the 95 % Wilson interval, for a result with an accuracy on n examples."""
    acc, n = out.get("accuracy"), out.get("n_examples")
    if isinstance(acc, (int, float)) and not isinstance(acc, bool) and isinstance(n, int) and n > 0:
        return {"accuracy_ci95": accuracy_interval(float(acc), n)}
    return {}
