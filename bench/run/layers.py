"""The layers a run's config is resolved from (bench/run/resolve.py): the method's settings, the
preset every method shares, the method's variant of it, a ``--config`` file; README.md (Use)
gives their order."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bench.core.config import deep_merge
from bench.core.errors import BenchError
from methods import get_method

PRESET_DIR = Path(__file__).parent / "presets"
PRESET_KEYS = frozenset({"description", "config"})


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@cache
def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def load_preset(name: str, method: str = "<method>") -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise BenchError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    data = copy.deepcopy(_read_yaml(path))  # each file read once; callers get their own copy
    unknown = sorted(set(data) - PRESET_KEYS)
    if unknown:
        raise BenchError(
            f"preset file {path} has unknown sections {', '.join(unknown)}: a preset holds "
            f"{' and '.join(sorted(PRESET_KEYS))}; per-method settings go in the presets of "
            f"method {method} (methods/<module>.yaml, {method}: presets: {name}:)"
        )
    return data


def method_preset(method: str, preset: str) -> dict[str, Any]:
    """A method's own variant of a preset: section ``<preset>`` of its class's ``presets`` (the
    built-ins': methods/<module>.yaml; a subclass inherits its base's)."""
    own = getattr(get_method(method), "presets", None) or {}
    if not isinstance(own, dict) or not all(isinstance(v, dict) for v in own.values()):
        raise BenchError(
            f"method {method!r}: its class attribute presets must map preset names to sections, "
            "e.g. {'demo': {'method': {'steps': 3}}}"
        )
    unknown = sorted(set(own) - set(preset_names()))
    if unknown:
        raise BenchError(
            f"method {method!r} ships variants of unknown presets {', '.join(unknown)}; "
            f"the presets are: {', '.join(preset_names())}"
        )
    return own.get(preset) or {}


def sections(d: dict[str, Any]) -> dict[str, Any]:
    """A mapping of config sections as written in files (``method:``) -> RunConfig's names (``method_cfg``)."""
    d = dict(d)
    if "method" in d and isinstance(d["method"], dict):
        d["method_cfg"] = deep_merge(d.get("method_cfg", {}), d.pop("method"))
    return d


def load_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BenchError(
            f"config file {path!r} not found; pass an existing YAML or JSON file to --config"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise BenchError(
            f"config file {path!r} is not valid YAML/JSON ({str(exc).splitlines()[0]}); fix its syntax"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(
            f"config file {path!r} must hold a mapping of sections (data:, optim:, ...)"
        )
    return sections(data)


def method_layers(method: str, preset: str) -> list[tuple[str, dict[str, Any]]]:
    """Layers 2-4 of the order: (source, sections) of what ``method`` is under ``preset``."""
    return [
        ("method", sections(getattr(get_method(method), "run_defaults", {}) or {})),
        (f"preset {preset}", sections(load_preset(preset, method).get("config", {}) or {})),
        (f"preset {preset} of {method}", sections(method_preset(method, preset))),
    ]
