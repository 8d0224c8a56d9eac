"""What `bench list KIND` prints: the registered names of a kind, one per line, each with its
one-line description, then the plugins that failed to load. :data:`KINDS` is the table (kind ->
its registry and how to describe an entry); a registry is imported only when its kind is listed."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bench.core.errors import BenchError


def _registry(where: str):
    """The registry at ``"package:NAME"``."""
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Listing:
    """How one kind is listed: its registry (``"package:NAME"``; None: ``names`` gives the names),
    ``describe(entry name)``, the width of the name column (None: the longest name) and what
    separates it from the description."""

    registry: str | None
    describe: Callable[[str], str]
    width: int | None = None
    sep: str = "  "
    names: Callable[[], list[str]] | None = None

    def entry(self, name: str):
        return _registry(self.registry).get(name)


def _first_doc_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _own_or_module_doc(obj) -> str:
    """The first line of ``obj``'s docstring, else of its module's (without reST markup)."""
    own = getattr(obj, "__doc__", None) and not isinstance(obj, (str, int, float))
    line = _first_doc_line(obj) if own else ""
    if not line:
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        line = _first_doc_line(module) if module is not None else ""
    line = line.replace("``", "")
    name = getattr(obj, "__name__", "")
    return line.split(": ", 1)[1] if name and line.startswith(f"{name}: ") else line  # "pgd: ..."


def _dataset_description(name: str) -> str:
    if name == "npz:PATH":
        return "your images: an .npz of uint8 NHWC x and labels y (x_test/y_test optional; else 20% held out)"
    # a pattern family (folder:PATH, a plugin's): its factory's docstring
    if name.endswith(":PATH"):
        factory = getattr(KINDS["datasets"].entry(name), "factory", None)
        line = _first_doc_line(factory).replace("``", "") if factory is not None else ""
        return line or "a family of datasets named by a path after the colon"
    return _own_or_module_doc(KINDS["datasets"].entry(name))


def _arch_description(name: str) -> str:
    if "-D-" in name or name.endswith("-W"):
        return "a family: wide ResNet of depth D (6n+4) and width W, e.g. wrn-28-10"
    obj = KINDS["archs"].entry(name)
    return _own_or_module_doc(getattr(obj, "factory", obj))


def _preset_names() -> list[str]:
    from bench.run.layers import preset_names

    return preset_names()


def _preset_description(name: str) -> str:
    from bench.run.layers import load_preset

    return load_preset(name).get("description", "")


KINDS: dict[str, Listing] = {
    "methods": Listing(
        "methods:METHODS", lambda name: getattr(KINDS["methods"].entry(name), "reference", "") or ""
    ),
    "datasets": Listing("bench.data:DATASETS", _dataset_description),
    "archs": Listing("bench.models:ARCHS", _arch_description),
    "presets": Listing(None, _preset_description, width=8, sep=" ", names=_preset_names),
    "metrics": Listing(
        "metrics:METRICS", lambda name: _own_or_module_doc(KINDS["metrics"].entry(name))
    ),
    "protocols": Listing(
        "metrics:PROTOCOLS",
        lambda name: KINDS["protocols"].entry(name).description,
        width=10,
        sep=" ",
        names=lambda: sorted(_registry("metrics:PROTOCOLS").names()),
    ),
    "samplers": Listing(
        "bench.sampling.kinds:SAMPLERS",
        lambda name: _first_doc_line(
            getattr(KINDS["samplers"].entry(name), "run", KINDS["samplers"].entry(name))
        ).replace("``", ""),
    ),
}


def list_lines(kind: str) -> list[str]:
    """The lines of `bench list KIND`."""
    if kind not in KINDS:
        raise BenchError(f"cannot list {kind!r}; choose one of {', '.join(KINDS)}")
    listing = KINDS[kind]
    names = listing.names() if listing.names else _registry(listing.registry).names()
    errors = dict(_registry(listing.registry).load_errors) if listing.registry else {}
    width = listing.width
    if width is None:
        width = max([len(n) for n in [*names, *errors]] or [0])
    lines = [f"{name:{width}s}{listing.sep}{listing.describe(name)}" for name in names]
    return lines + [f"{n:{width}s}{listing.sep}(failed to load: {e})" for n, e in errors.items()]
