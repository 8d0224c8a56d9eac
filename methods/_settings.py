"""The built-in methods' settings, each written once in the YAML file beside its module
(``methods/<module>.yaml``, keyed by method name): the reference's sampler, the run settings
(``run_defaults``) and the variants of the presets (``presets``); docs/methods.md describes them."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from bench.core.config import deep_merge
from bench.sampling.sampler import SamplerConfig, reference_sampler


@cache
def file_entries(module: str) -> dict[str, dict[str, Any]]:
    """The entries of ``methods/<module>.yaml``, in the file's order."""
    return yaml.safe_load(Path(__file__).with_name(f"{module}.yaml").read_text())


@cache
def _entries() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(__file__).parent.glob("*.yaml")):
        out.update(file_entries(path.stem))
    return out


def settings(method: str) -> dict[str, Any]:
    """Method ``method``'s entry; ``run`` already merged over the entry named by ``run_of``."""
    entry = dict(_entries()[method])
    if "run_of" in entry:  # settings another method's entry holds (sada-jem: its EB-JDAT base's)
        entry["run"] = deep_merge(settings(entry["run_of"])["run"], entry.get("run", {}))
    return {"run": {}, "presets": {}, **entry}


def sampler_of(method: str) -> SamplerConfig:
    """The sampler of ``method``'s entry: a reference's (references.yaml) with the entry's changes."""
    changes = dict(settings(method)["sampler"])
    return reference_sampler(changes.pop("reference"), **changes)
