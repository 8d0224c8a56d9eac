"""Typed settings from plain values: dataclasses to and from dicts, coercion to a field's type with
one-line errors, ``--set`` items and ``--seeds`` parsed, and range checks. A leaf, like the schema it
serves (bench/core/config.py); the README ("Use") says how settings are layered.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import fields, is_dataclass
from typing import Any, get_type_hints

import yaml

from bench.core.errors import BenchError


def to_dict(obj: Any) -> Any:
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (bool, int, float, str, list[...]), or one line naming ``where``."""
    origin = getattr(hint, "__origin__", None)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise BenchError(f"{where} expects true/false, got {value!r}")
    if hint is int:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())  # NaN and infinities too
        ):
            raise BenchError(f"{where} expects an integer, got {value!r}")
        if not -(2**63) <= value < 2**63:  # what torch and numpy take
            raise BenchError(f"{where} expects a 64-bit integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads exponents without a dot (1e-4, 5e-4) as strings
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                value = number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BenchError(f"{where} expects a number, got {value!r}")
        # every numeric setting: NaN, infinity or beyond a float is never meant
        if not (math.isfinite(value) if isinstance(value, float) else abs(value) < 2**1024):
            raise BenchError(f"{where} expects a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # YAML 1.1 reads the words off/on (and no/yes) as booleans
            return "on" if value else "off"
        if not isinstance(value, (str, int, float)):
            raise BenchError(f"{where} expects a string, got {value!r}")
        return str(value)
    if hint is dict:
        if not isinstance(value, dict):
            raise BenchError(f'{where} expects a mapping, e.g. {{"steps": 5}}, got {value!r}')
        return value
    if origin in (tuple, list):
        if (
            isinstance(value, str)
            and getattr(hint, "__args__", (None,))[0] is str
            and origin is list
        ):
            value = [value]  # one item of a list of names, e.g. --set autoattack.attacks=apgd-ce
        if not isinstance(value, (list, tuple)):
            raise BenchError(f"{where} expects a list, got {value!r}")
        args = getattr(hint, "__args__", ())
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise BenchError(f"{where} expects {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, where) for v, a in zip(value, args))
        inner = args[0] if args else Any
        out = [coerce(v, inner, where) if inner is not Any else v for v in value]
        return tuple(out) if origin is tuple else out
    return value


def update_dataclass(obj: Any, values: dict[str, Any], where: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with ``values`` (nested dicts) applied and type-checked."""
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    changes = {}
    for key, value in values.items():
        path = f"{where}{key}"
        if key not in names:
            raise BenchError(
                f"unknown setting {path!r}; valid keys here: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise BenchError(f"{path} is a section; set its keys, e.g. {path}.<key>=...")
            changes[key] = update_dataclass(current, value, path + ".")
        elif key == "method_cfg":
            if not isinstance(value, dict):
                raise BenchError(f"{path} must be a mapping")
            changes[key] = deep_merge(current, value)
        else:
            changes[key] = coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    return update_dataclass(cls(), values)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> ``{"optim.lr": 0.1, "method.sampler.steps": 5, ...}`` (``method_cfg`` read as ``method``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{'method' if k == 'method_cfg' and not prefix else k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_set(item: str) -> dict[str, Any]:
    """``optim.lr=0.01`` -> ``{"optim": {"lr": 0.01}}`` (values parsed as YAML scalars/lists).

    ``method.<key>=...`` addresses the method's own config.
    """
    key, _, raw = item.partition("=")
    key = key.strip()
    if "=" not in item or not key or any(not part for part in key.split(".")):
        raise BenchError(
            f"malformed --set {item!r}: use --set section.key=value, e.g. --set optim.lr=0.01"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise BenchError(
            f"malformed value in --set {item!r}: write a number, true/false, a word or [a, b]"
        )
    parts = key.split(".")
    if parts[0] == "method":
        parts[0] = "method_cfg"
    for part in reversed(parts):
        value = {part: value}
    return value


def check_settings(
    obj: Any,
    prefix: str,
    choices: dict[str, Any] | None = None,
    minimum: dict[str, float] | None = None,
) -> None:
    """Refuse, with one line naming the setting, a value of ``obj`` outside its ``choices`` or below
    its ``minimum`` (``{"eps": 0}``: eps >= 0). ``prefix`` is the settings' section, e.g. ``"method."``."""
    for name, allowed in (choices or {}).items():
        if getattr(obj, name) not in allowed:
            raise BenchError(
                f"{prefix}{name}={getattr(obj, name)!r} is not valid; choose one of: "
                f"{', '.join(map(str, allowed))}"
            )
    for name, low in (minimum or {}).items():
        value = getattr(obj, name)
        if not value >= low:  # NaN fails too
            raise BenchError(f"{prefix}{name} must be >= {low:g}, got {value}")


def admits(rule: str, value: float) -> bool:
    """Whether ``value`` keeps ``rule`` (a ``RANGES`` entry: bench.core.config says how they read);
    NaN keeps none."""
    interval = re.search(r"lie in ([\[(])(\S+), (\S+?)([\])])", rule)
    if interval:
        lo, a, b, hi = interval.groups()
        above = value >= float(a) if lo == "[" else value > float(a)
        return above and (value <= float(b) if hi == "]" else value < float(b))
    rule = re.sub(r"\(.*?\)", "", rule)  # the notes
    if "positive" in rule:
        return value > 0
    low = re.search(r">= (\S+)", rule)
    if low:
        return value >= float(low[1])
    return value in {float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", rule)}


def check_ranges(values: dict[str, Any], ranges: dict[str, str]) -> None:
    """Refuse, in one line, the first of ``values`` (flat: ``{"optim.lr": 0.1}``) outside its rule
    in ``ranges`` (bench.core.config.RANGES)."""
    for path, value in values.items():
        rule = ranges.get(path)
        items = value if isinstance(value, (list, tuple)) else [value]
        if rule and not all(admits(rule, v) for v in items):
            shown = json.dumps(value) if isinstance(value, (list, tuple)) else value
            raise BenchError(f"{path} {rule}, got {shown}")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct non-negative integers, at least one."""
    items = [t.strip() for t in str(text).split(",")]
    if not any(items):
        raise BenchError(
            "--seeds is empty; give distinct integers separated by commas, e.g. --seeds 0,1,2"
        )
    seeds = []
    for t in items:
        if not t.isdigit():
            raise BenchError(
                f"--seeds {text!r}: {t!r} is not a non-negative integer; e.g. --seeds 0,1,2"
            )
        seeds.append(int(t))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise BenchError(
            f"--seeds {text!r} repeats {', '.join(map(str, repeated))}; each seed once, e.g. --seeds 0,1,2"
        )
    return seeds
