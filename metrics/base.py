"""Metric registry, how a metric presents its numbers, and shared helpers. A metric is
``fn(model, data, settings, ctx) -> dict`` of named numbers plus ``n_examples``; its
:class:`Presentation` (headlines, scale, unit, direction, column order, one-line summary) is what
`bench compare`, `bench show` and `bench eval` read, so a plugin's metric reaches every table
(README.md, "Adding your own metric")."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import BenchError
from bench.core.registry import Registry
from bench.core.settings import coerce

METRICS: Registry = Registry("metric", group="trilemma_bench.metrics", packages=("metrics",))
# bookkeeping keys of a result, never shown as numbers
NOT_NUMBERS = frozenset({"n_examples", "seconds"})


@dataclass(frozen=True)
class Headline:
    """One number a leaderboard shows for a metric: ``result[key] * scale``, rounded, in ``unit``."""

    key: str  # the key in the metric's result
    label: str  # the column's name after ``<protocol>/``
    # shown value = stored value * scale (100 for accuracies stored as fractions)
    scale: float = 1.0
    unit: str = ""  # "%" for percentages
    higher_is_better: bool | None = True  # None: no direction (e.g. a signed gap)
    decimals: int = 4
    # the result's key of this number's spread (e.g. KID's std), shown as +-
    spread: str | None = None

    def shown(self, value: float) -> float:
        return round(float(value) * self.scale, self.decimals)


def accuracy_headline(label: str) -> Headline:
    """An accuracy stored as a fraction under ``accuracy``, shown in percent."""
    return Headline("accuracy", label, scale=100.0, unit="%", decimals=2)


def _numbers(res: dict[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in res.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_NUMBERS
    }


@dataclass(frozen=True)
class Presentation:
    """How a metric's results are shown. ``order`` places its columns: accuracy (10s) before
    robustness (20s), generation (40s), energies (50s), calibration (60s) and the rest (100)."""

    headlines: tuple[Headline, ...] = ()
    order: int = 100
    # one line for `bench eval` / `bench show`
    summary: Callable[[dict[str, Any]], str] | None = None
    checked: bool = False  # its results carry guardrail checks and `reliable` (robustness metrics)
    brief: bool = True  # its headlines are in `bench compare`'s default view (not only with --wide)

    def headlines_for(self, metric: str, res: dict[str, Any]) -> tuple[Headline, ...]:
        """The declared headlines; for an undeclared metric, its accuracy in percent if it has
        one, otherwise every number it returned."""
        if self.headlines:
            return self.headlines
        nums = _numbers(res)
        if "accuracy" in nums:
            return (accuracy_headline(metric),)
        return tuple(Headline(k, f"{metric}.{k}") for k in nums)

    def describe(self, metric: str, res: dict[str, Any]) -> str:
        """The one-line summary: the metric's own; else its declared headline numbers and n; else
        every number it returned."""
        if self.summary is not None:
            return self.summary(res)
        parts = [
            f"{h.label} {h.shown(res[h.key]):.{h.decimals}f}{h.unit}"
            for h in self.headlines
            if isinstance(res.get(h.key), (int, float)) and not isinstance(res.get(h.key), bool)
        ]
        if not parts:
            return ", ".join(f"{k} {v:.4g}" for k, v in _numbers(res).items())
        n = res.get("n_examples")
        return ", ".join(parts) + (f"  n={n}" if n is not None else "")


@dataclass(frozen=True)
class Setting:
    """A metric setting's type and range, declared where the metric registers: a number lies in
    [``low``, ``high``] (``low`` itself excluded when ``open_low``), a word (or each word of a list)
    is one of ``choices``, a mapping holds only the settings of ``fields``. ``unit`` is named in
    the refusal."""

    kind: Any
    low: float | None = None
    high: float | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()
    open_low: bool = False
    fields: dict[str, Setting] | None = None

    def rule(self) -> str:
        unit = f" ({self.unit})" if self.unit else ""
        if self.choices:
            return f"one of: {', '.join(self.choices)}{unit}"
        bounds = [f"{'>' if self.open_low else '>='} {self.low:g}"] if self.low is not None else []
        bounds += [f"<= {self.high:g}"] if self.high is not None else []
        noun = "an integer" if self.kind is int else "a number"
        return f"{noun} {' and '.join(bounds)}{unit}"

    def check(self, value: Any, where: str) -> Any:
        """``value`` converted to the setting's type, or one line saying what it must be."""
        value = coerce(value, self.kind, where)
        if self.fields is not None:
            return check_values(value, self.fields, where)
        words = value if isinstance(value, list) else [value]
        low, high = self.low, self.high
        if (
            (self.choices and any(w not in self.choices for w in words))
            or (low is not None and (value <= low if self.open_low else value < low))
            or (high is not None and value > high)
        ):
            raise BenchError(f"{where}={value!r} is out of range: it must be {self.rule()}")
        return value


def check_values(values: dict[str, Any], schema: dict[str, Setting], where: str) -> dict:
    """``values`` with each one checked against (and converted to) its setting in ``schema``; a key
    ``schema`` does not have is refused."""
    unknown = sorted(set(values) - set(schema))
    if unknown:
        raise BenchError(
            f"{where}: unknown setting {unknown[0]!r}; its settings: {', '.join(sorted(schema))}"
        )
    return {k: schema[k].check(v, f"{where}.{k}") for k, v in values.items()}


SEED = Setting(int, 0, 2**32 - 1)  # numpy's RandomState (torch-fidelity) takes no larger seed
# settings every metric receives from the protocol (besides those it declares)
COMMON_SETTINGS = {
    "n_examples": Setting(int, 1, unit="test images"),
    "input_noise": Setting(float, 0, 1, unit="pixel units"),
}


def register_metric(
    name: str,
    fn: Callable | None = None,
    *,
    headlines: tuple[Headline, ...] = (),
    order: int = 100,
    summary: Callable[[dict[str, Any]], str] | None = None,
    settings: tuple[str, ...] | dict[str, type | Setting] | None = None,
    checked: bool = False,
    brief: bool = True,
    replace: bool = False,
):
    """Register metric ``fn`` (or decorate it) under ``name``, with how its numbers are presented.

    ``settings`` names the settings ``fn`` reads (besides ``n_examples`` and ``input_noise``): a
    ``--set METRIC.KEY=...`` with another key is refused instead of being stored as if applied.
    None (a plugin that declares nothing) accepts any key; a mapping ``{name: type}`` also has each
    value checked and converted (int, float, str, bool), and ``{name: Setting(...)}`` its range too,
    so that a value outside it is refused before anything is evaluated or stored. ``checked``: its
    results carry guardrail ``checks`` and ``reliable`` (see metrics.guards); tables mark a result
    without them as unchecked. ``brief``: its headlines are in the default leaderboard view (False:
    only with ``--wide``).
    """

    def add(f: Callable) -> Callable:
        f.presentation = Presentation(tuple(headlines), order, summary, checked, brief)
        own = settings if isinstance(settings, dict) else dict.fromkeys(settings or (), Any)
        kinds = {k: s if isinstance(s, Setting) else Setting(s) for k, s in own.items()}
        f.schema = None if settings is None else {**kinds, **COMMON_SETTINGS}
        METRICS.register(name, f, replace=replace)
        return f

    return add(fn) if fn is not None else add


def metric_schema(metric: str) -> dict[str, Setting] | None:
    """Each setting ``metric`` reads with its type and range, or None when it does not declare
    them (``n_examples`` and ``input_noise`` are then still checked: see COMMON_SETTINGS)."""
    return getattr(METRICS.get(metric), "schema", None)


def presentation(metric: str) -> Presentation:
    """How ``metric``'s results are shown; a metric no longer installed gets the default."""
    fn = METRICS.get(metric) if metric in METRICS else None
    return getattr(fn, "presentation", None) or Presentation()


def accuracy_summary(res: dict[str, Any]) -> str:
    return f"accuracy {100 * res['accuracy']:.2f}%  n={res.get('n_examples')}"


class MetricUnavailable(BenchError):
    """A metric's inputs (generated samples, feature-extractor weights, ...) are missing; one line
    says how to fix it."""


@dataclass
class EvalContext:
    """What every metric of one evaluation shares: where and how it runs, and its inputs."""

    device: torch.device
    batch_size: int = 256
    seed: int = 0
    out_dir: Path | None = None  # where a metric may write artifacts (figures, generated samples)
    show_progress: bool = True
    protocol: str = "eval"  # names the artifacts; set by metrics.engine.evaluate
    cfg: Any = None  # the run's config: generative metrics draw samples with the run's sampler
    samples: str | None = None  # --samples FILE.npz: generated images instead of the run's sampler
    weights: str | None = None  # --weights: the Inception weights file
    buffer_state: dict | None = None  # the run's saved replay buffer (sample_source auto/buffer)
    # computed once per evaluation and reused by its later metrics, keyed by what fixes them
    adversarial: dict[tuple, torch.Tensor] = field(default_factory=dict)  # dropped when it ends
    generated: dict[tuple, Any] = field(default_factory=dict)
    fidelity: dict[tuple, Any] = field(default_factory=dict)


def test_subset(data, n_examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_examples`` test images (uint8, as the dataset holds them; :func:`batches` hands
    them out as float [0, 1] on the device) and their labels: the same fixed subset for every metric."""
    n = min(n_examples, data.x_test.shape[0]) if n_examples > 0 else data.x_test.shape[0]
    return data.x_test[:n], data.y_test[:n]


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True)
        if xb.dtype == torch.uint8:
            xb = xb.float().div_(255.0)
        yield xb, y[i : i + batch_size].to(device, non_blocking=True)


def say(ctx, line: str) -> None:
    """A progress line on stderr (above any progress bar), unless the evaluation is quiet (``-q``)."""
    if ctx.show_progress:
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)


def progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True
    )


# ----------------------------------------------------------------------------------------
# adversarial examples shared between the metrics of one evaluation
# ----------------------------------------------------------------------------------------
def pgd_attack_key(attack: dict[str, Any], n_examples: int, seed: int) -> tuple:
    """What fixes an l-inf PGD evaluation attack's output on a deterministic model: its settings, the
    test images (the first ``n_examples``) and the seed of its random starts."""
    return (
        "pgd-linf",
        float(attack.get("eps", 8 / 255)),
        float(attack.get("alpha", 2 / 255)),
        int(attack.get("steps", 20)),
        int(attack.get("restarts", 1)),
        int(attack.get("eot", 1)),
        int(n_examples),
        int(seed),
    )


def keep_adversarial(ctx, key: tuple, x_adv: torch.Tensor) -> None:
    """Keep one metric's adversarial examples (on the CPU) for a later metric of the same evaluation
    that runs the same attack (``energy`` after ``pgd``); :func:`metrics.engine.evaluate` drops
    them when it ends."""
    ctx.adversarial[key] = x_adv


def kept_adversarial(ctx, key: tuple) -> torch.Tensor | None:
    return ctx.adversarial.get(key)
