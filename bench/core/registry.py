"""Name -> object registries, filled by decorators and by entry points of installed packages: one
mechanism for every plug-in kind (methods, metrics, protocols, datasets, architectures, samplers; the
kinds and their entry-point groups: docs/architecture.md, "One plug-in mechanism")."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from bench.core.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(
        self,
        kind: str,
        group: str | None = None,
        packages: tuple[str, ...] = (),
        accepts: Callable[[Any], bool] | None = None,
        expected: str = "",
    ):
        """``packages``: the built-in packages whose public modules register entries when imported.
        ``accepts``: what an entry point may name (else it is a load error saying ``expected``)."""
        self.kind = kind
        self.group = group
        self.packages = packages
        self.accepts, self.expected = accepts, expected
        self._entries: dict[str, T] = {}
        self._patterns: list[tuple[re.Pattern[str], str, Callable[..., T]]] = []
        self._loaded = False
        self.load_errors: dict[str, str] = {}
        self.origins: dict[str, str] = {}  # name -> the module of the entry point that supplied it

    # -- registration -------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None, *, replace: bool = False):
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""

        def add(o: T) -> T:
            if name in self._entries and self._entries[name] is not o and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            return o

        return add(obj) if obj is not None else add

    def register_pattern(self, pattern: str, display: str):
        """Register a parametric family, e.g. ``wrn-(?P<depth>\\d+)-(?P<width>\\d+)``.

        The decorated factory is called with the regex groups (as ints where numeric).
        """

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            self._patterns.append((re.compile(pattern + r"\Z"), display, factory))
            return factory

        return add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        self.origins.pop(name, None)

    # -- discovery ----------------------------------------------------------------------
    def _load(self) -> None:
        if self._loaded:
            return
        # set first: a built-in module may look entries up while it registers its own
        self._loaded = True
        try:
            for package in self.packages:
                for module in builtin_modules(package):
                    importlib.import_module(module)
        except BaseException:
            # a broken built-in module fails every lookup loudly, not as "unknown name"
            self._loaded = False
            raise
        if self.group:
            for ep in entry_points(group=self.group):
                if ep.name in self._entries:
                    continue
                try:
                    obj = ep.load()
                except Exception as exc:  # a broken third-party plugin must not break the tool
                    self.load_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                    continue
                if ep.name in self._entries or _is_module(obj):
                    continue
                if self.accepts is not None and not self.accepts(obj):
                    self.load_errors[ep.name] = (
                        f"entry point {ep.value} names {type(obj).__name__} "
                        f"{getattr(obj, '__name__', '')!s}, not {self.expected}"
                    )
                    continue
                self._entries[ep.name] = obj
                self.origins[ep.name] = ep.module

    def reload_entry_points(self) -> None:
        self._loaded = False
        self._load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries) + [d for _, d, _ in self._patterns]

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except BenchError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        self._load()
        if name in self._entries:
            return self._entries[name]
        for regex, _, factory in self._patterns:
            m = regex.match(name)
            if m:
                kwargs = {k: _num(v) for k, v in m.groupdict().items()}
                return _Bound(factory, kwargs)  # type: ignore[return-value]
        hint = ""
        if name in self.load_errors:
            hint = f" (its plugin failed to load: {self.load_errors[name]})"
        raise BenchError(
            f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}"
        )


class _Bound:
    """A pattern factory with the name's parameters bound, callable with further kwargs."""

    def __init__(self, factory: Callable[..., Any], kwargs: dict[str, Any]):
        self.factory, self.kwargs = factory, kwargs

    def __call__(self, **more: Any) -> Any:
        return self.factory(**self.kwargs, **more)


def builtin_modules(package: str) -> list[str]:
    """The public modules of ``package`` (names not starting with ``_``), sorted."""
    pkg = importlib.import_module(package)
    return sorted(
        f"{package}.{m.name}"
        for m in pkgutil.iter_modules(pkg.__path__)
        if not m.name.startswith("_")
    )


def _num(v: str) -> Any:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return v
    return n if str(n) == v else v  # "007" or " 7" (e.g. part of a file name) stays text


def _is_module(obj: Any) -> bool:
    return type(obj).__name__ == "module"


BUILTIN_PACKAGES = frozenset({"bench", "methods", "metrics"})  # trilemma-bench's own packages


def provider(obj: Any) -> dict[str, Any] | None:
    """Where a registered object (a method class, a metric function, ...) comes from: None for
    trilemma-bench's own; else its distribution's name and version (as installed) and its module."""
    return module_provider(getattr(obj, "__module__", None) or type(obj).__module__)


def module_provider(module: str) -> dict[str, Any] | None:
    """:func:`provider` of whatever module ``module`` (a dotted name) defines."""
    top = module.split(".")[0]
    if top in BUILTIN_PACKAGES:
        return None
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    dists = packages_distributions().get(top) or []
    package = dists[0] if dists else None
    try:
        ver = version(package) if package else None
    except PackageNotFoundError:
        ver = None
    return {"package": package or top, "version": ver, "module": module}
