"""What `bench list KIND` prints: the registered names of a kind, one per line, each with its
one-line description where the kind has one.

:data:`KINDS` is the table: kind -> how to get its names and describe each. Listing a new kind
is one more row; the registries are imported only when their kind is listed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from bench.core.errors import BenchError


@dataclass(frozen=True)
class Listing:
    """How one kind is listed: ``names()``; ``describe(name)`` (None: names only); the width of the
    name column (None: the longest name) and what separates it from the description; ``errors()``:
    ``{name: error}`` of entries that failed to load, listed after the others."""

    names: Callable[[], list[str]]
    describe: Callable[[str], str] | None = None
    width: int | None = None
    sep: str = "  "
    errors: Callable[[], dict[str, str]] | None = None


def _first_doc_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _own_or_module_doc(obj) -> str:
    """The first line of ``obj``'s docstring, else of its module's (without reST markup)."""
    import sys

    line = (
        _first_doc_line(obj)
        if getattr(obj, "__doc__", None) and not isinstance(obj, (str, int, float))
        else ""
    )
    if not line:
        module = sys.modules.get(getattr(obj, "__module__", "") or "")
        line = _first_doc_line(module) if module is not None else ""
    line = line.replace("``", "")
    name = getattr(obj, "__name__", "")
    return (
        line.split(": ", 1)[1] if name and line.startswith(f"{name}: ") else line
    )  # "pgd: ..." -> "..."


# -- per-kind accessors (imported lazily: listing presets must not import every method) -------------
def _methods():
    from methods import METHODS

    return METHODS


def _method_reference(name: str) -> str:
    return getattr(_methods().get(name), "reference", "") or ""


def _datasets() -> list[str]:
    from bench.data import DATASETS

    return DATASETS.names()


def _archs() -> list[str]:
    from bench.models import ARCHS

    return ARCHS.names()


def _preset_names() -> list[str]:
    from bench.run.layers import preset_names

    return preset_names()


def _preset_description(name: str) -> str:
    from bench.run.layers import load_preset

    return load_preset(name).get("description", "")


def _metrics() -> list[str]:
    from metrics import METRICS

    return METRICS.names()


def _metric_description(name: str) -> str:
    from metrics import METRICS

    return _own_or_module_doc(METRICS.get(name))


def _dataset_description(name: str) -> str:
    from bench.data import DATASETS

    if name == "npz:PATH":
        return "your images: an .npz of uint8 NHWC x and labels y (x_test/y_test optional; else 20% held out)"
    if name.endswith(
        ":PATH"
    ):  # a pattern family (folder:PATH, a plugin's): its factory's docstring, if any
        factory = getattr(DATASETS.get(name), "factory", None)
        line = _first_doc_line(factory).replace("``", "") if factory is not None else ""
        return line or "a family of datasets named by a path after the colon"
    return _own_or_module_doc(DATASETS.get(name))


def _arch_description(name: str) -> str:
    from bench.models import ARCHS

    if "-D-" in name or name.endswith("-W"):
        return "a family: wide ResNet of depth D (6n+4) and width W, e.g. wrn-28-10"
    obj = ARCHS.get(name)
    return _own_or_module_doc(getattr(obj, "factory", obj))


def _protocols() -> list[str]:
    from metrics import PROTOCOLS

    return sorted(PROTOCOLS.names())


def _protocol_description(name: str) -> str:
    from metrics import PROTOCOLS

    return PROTOCOLS.get(name).description


def _samplers() -> list[str]:
    from bench.sampling.kinds import SAMPLERS

    return SAMPLERS.names()


def _sampler_description(name: str) -> str:
    from bench.sampling.kinds import SAMPLERS

    kind = SAMPLERS.get(name)
    return _first_doc_line(getattr(kind, "run", kind)).replace("``", "")


def _load_errors(registry: str) -> Callable[[], dict[str, str]]:
    """``{name: error}`` of the plugins of ``registry`` ("package:NAME") that failed to load."""
    module, _, name = registry.partition(":")

    def errors() -> dict[str, str]:
        import importlib

        return dict(getattr(importlib.import_module(module), name).load_errors)

    return errors


KINDS: dict[str, Listing] = {
    "methods": Listing(
        lambda: _methods().names(), _method_reference, errors=_load_errors("methods:METHODS")
    ),
    "datasets": Listing(
        _datasets, _dataset_description, errors=_load_errors("bench.data:DATASETS")
    ),
    "archs": Listing(_archs, _arch_description, errors=_load_errors("bench.models:ARCHS")),
    "presets": Listing(_preset_names, _preset_description, width=8, sep=" "),
    "metrics": Listing(_metrics, _metric_description, errors=_load_errors("metrics:METRICS")),
    "protocols": Listing(
        _protocols,
        _protocol_description,
        width=10,
        sep=" ",
        errors=_load_errors("metrics:PROTOCOLS"),
    ),
    "samplers": Listing(
        _samplers, _sampler_description, errors=_load_errors("bench.sampling.kinds:SAMPLERS")
    ),
}


def list_lines(kind: str) -> list[str]:
    """The lines of `bench list KIND`."""
    if kind not in KINDS:
        raise BenchError(f"cannot list {kind!r}; choose one of {', '.join(KINDS)}")
    listing = KINDS[kind]
    names = listing.names()
    errors = listing.errors() if listing.errors else {}
    if listing.describe is None:
        return [*names, *(f"{name}  (failed to load: {err})" for name, err in errors.items())]
    width = (
        listing.width
        if listing.width is not None
        else max([len(n) for n in [*names, *errors]] or [0])
    )
    lines = [f"{name:{width}s}{listing.sep}{listing.describe(name)}" for name in names]
    lines += [
        f"{name:{width}s}{listing.sep}(failed to load: {err})" for name, err in errors.items()
    ]
    return lines
