"""Resolve a run once: its config from the method, the preset, a ``--config`` file and ``--set``
items (in README.md's order, Use), where each value came from, and how the run departs from its
preset; docs/records.md says what a record stores of it."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from bench.core.config import (
    CUDA_GRAPH_MODES,
    RunConfig,
    check_compile,
    deep_merge,
    flatten,
    parse_set,
    to_dict,
    update_dataclass,
    validate,
)
from bench.core.errors import BenchError
from bench.run.layers import load_config_file, method_layers, sections
from bench.train.loggers import check_logger_names
from methods import METHODS, get_method
from metrics import get_protocol

# settings chosen by their own flags or shown in their own columns, never listed as changes
NOT_CHANGES = frozenset(
    "method preset seed device data.dataset data.data_dir model.arch train.loggers".split()
)
# settings that change how a run reports itself, not what it trains: never part of a preset variant
BOOKKEEPING = frozenset(
    {"train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "method.grid_size"}
)
CHOSEN = "--set/flags"  # the source of a value set by --set or a flag
# the source of a value a config given without its resolution (a sweep's, an old record's) departs in
CHANGED = "--config or --set"


@dataclass
class Resolved:
    """A run's settings, resolved once: stored in its record (``config``, ``changes``,
    ``preset_variant``, ``sources``, the plugins) and shown by ``bench run --dry-run``."""

    config: RunConfig
    # setting -> the layer that set it last; a setting missing here keeps the specification's default
    sources: dict[str, str]
    # the settings in which the run departs from its method under its preset (--config, --set)
    changes: dict[str, Any] | None
    # the settings in which the method's own variant of the preset departs from the shared preset
    preset_variant: dict[str, Any] | None
    plugins: list[dict[str, Any]] = field(default_factory=list)


def _apply(cfg: RunConfig, layers: list[tuple[str, dict[str, Any]]]) -> RunConfig:
    for _, values in layers:
        cfg = update_dataclass(cfg, values)
    return cfg


def finish(cfg: RunConfig) -> RunConfig:
    """The method's own config typed, validated and filled in; the whole config validated."""
    method = get_method(cfg.method)
    cfg = dataclasses.replace(cfg, method_cfg=to_dict(method.make_config(cfg.method_cfg)))
    validate(cfg, builtin_method=method.__module__.startswith("methods."))
    if cfg.train.compile in CUDA_GRAPH_MODES:  # the method's part of the check, before any write
        safe = [n for n in METHODS.names() if getattr(METHODS.get(n), "cuda_graph_safe", False)]
        is_safe = getattr(method, "cuda_graph_safe", False)
        check_compile(cfg.train, cfg.device, cfg.method, is_safe, safe)
    check_logger_names(cfg.train.loggers)
    check_buffer_fits(cfg)
    if cfg.eval.enabled:  # an unknown protocol would only fail after training
        get_protocol(cfg.eval.protocol)
    return cfg


def check_buffer_fits(cfg: RunConfig) -> None:
    """Refuse, in one line with its size, a replay buffer larger than the memory of the device it
    lives on: float32 images of ``data.image_size`` (or 32) pixels a side, 3 channels."""
    sampler = cfg.method_cfg.get("sampler") if isinstance(cfg.method_cfg, dict) else None
    size = int((sampler or {}).get("buffer_size", 0))
    side = cfg.data.image_size or 32
    need = size * 3 * side * side * 4
    if need < 2**30:  # nothing to ask the machine about
        return
    import torch

    kind, _, index = str(cfg.device).partition(":")
    if kind != "cpu" and torch.cuda.is_available():
        where, have = "the GPU", torch.cuda.get_device_properties(int(index or 0)).total_memory
    else:
        where, have = "this machine", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise BenchError(
            f"method.sampler.buffer_size={size} holds {need / 1e9:.1f} GB of {side}x{side} images, "
            f"more than the {have / 1e9:.1f} GB of memory of {where}; lower method.sampler.buffer_size"
        )


def resolve(
    method: str,
    preset: str = "cpu",
    dataset: str | None = None,
    arch: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Resolved:
    """Resolve a run: the config (validated) and what :class:`Resolved` says about it."""
    layers = method_layers(method, preset)
    cfg = _apply(RunConfig(method=method, preset=preset), layers)
    from_file = load_config_file(config_file) if config_file else {}
    if config_file:
        layers.append(("--config", from_file))
    cli: dict[str, Any] = {}
    for item in overrides:
        cli = deep_merge(cli, parse_set(item))
    cfg = update_dataclass(cfg, _switched_sampler_steps(cfg, deep_merge(from_file, sections(cli))))
    if from_file:
        cfg = update_dataclass(cfg, from_file)
    flags = {"seed": seed, "device": device, "data.dataset": dataset, "model.arch": arch}
    for key, value in flags.items():
        if value is not None:
            cli = deep_merge(cli, unflatten(key, value))
    cfg = update_dataclass(cfg, cli)
    for key, chosen in (("method", method), ("preset", preset)):
        got = getattr(cfg, key)
        if got != chosen:  # e.g. `method: pgd-at` in a --config file: the code would stay ce's
            raise BenchError(
                f"{key} {got!r} set in a config file or --set differs from --{key} {chosen}; "
                f"choose it with --{key} {got} instead"
            )
    sources = {"method": "--method", "preset": "--preset"}
    for name, values in layers:
        sources.update(dict.fromkeys(flatten(values), name))
    sources.update(dict.fromkeys(flatten(cli), CHOSEN))
    cfg = finish(cfg)
    return Resolved(cfg, sources, *departures(cfg), run_plugins(cfg))


def resolve_config(method: str, preset: str = "cpu", **options: Any) -> RunConfig:
    """The validated config of :func:`resolve` alone."""
    return resolve(method, preset, **options).config


def resolved_from_config(cfg: RunConfig) -> Resolved:
    """What :func:`resolve` says of a config given without its resolution (a sweep's cell, a
    resumed run's): the values in which it departs from its preset are marked as chosen."""
    sources = {"method": "--method", "preset": "--preset"}
    for name, values in method_layers(cfg.method, cfg.preset):
        sources.update(dict.fromkeys(flatten(values), name))
    changes, variant = departures(cfg)
    sources.update(dict.fromkeys(changes or {}, CHANGED))
    return Resolved(cfg, sources, changes, variant, run_plugins(cfg))


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    return flatten(json.loads(json.dumps(config)))


def _preset_config(method: str, preset: str, variant: bool = True) -> RunConfig:
    """What ``method`` is under ``preset`` (layers 1-4; 1-3 without its ``variant``)."""
    layers = method_layers(method, preset)
    return _apply(RunConfig(method=method, preset=preset), layers if variant else layers[:2])


def variant_of(method: str, preset: str) -> dict[str, Any]:
    """The ``preset_variant`` of :class:`Resolved`: where the method's own variant of the preset
    departs from the preset every method shares (``{"method.steps": 3}``)."""
    shared = _flat(finish(_preset_config(method, preset, variant=False)).to_dict())
    own = _flat(finish(_preset_config(method, preset)).to_dict())
    skip = NOT_CHANGES | BOOKKEEPING
    return {k: v for k, v in sorted(own.items()) if k not in skip and shared.get(k) != v}


def changes_of(config: dict[str, Any]) -> dict[str, Any]:
    """The ``changes`` of :class:`Resolved`: where a resolved config (as a record stores it)
    departs from what its method and preset give it (``{"optim.lr": 0.01}``)."""
    picked = {"data": {"dataset": config["data"]["dataset"]}}
    picked["model"] = {"arch": config["model"]["arch"]}
    ref = update_dataclass(_preset_config(config["method"], config["preset"]), picked)
    ref = _flat(finish(ref).to_dict())
    ran = _flat(config).items()
    return {k: v for k, v in sorted(ran) if k not in NOT_CHANGES and k in ref and ref[k] != v}


def departures(cfg: RunConfig) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``cfg``'s changes and preset variant; both None when its method and preset no longer
    describe it (compare then shows "?")."""
    try:
        return changes_of(cfg.to_dict()), variant_of(cfg.method, cfg.preset)
    except Exception:
        return None, None


def _switched_sampler_steps(cfg: RunConfig, chosen: dict[str, Any]) -> dict[str, Any]:
    """When a --config file or --set switches ``method.sampler.kind``, the new kind's reference step
    settings (its ``step_fields``, e.g. SGLD's step size and noise) for those the user did not set
    as well: jem++'s PYLD has no SGLD step size (0), so ``--set method.sampler.kind=sgld`` alone
    would sample with steps of 0. As ``bench sample --sampler`` does (``with_kind``)."""
    sampler = (chosen.get("method_cfg") or {}).get("sampler")
    if not isinstance(sampler, dict) or "kind" not in sampler:
        return {}
    before = (cfg.method_cfg.get("sampler") or {}).get("kind")
    if before is None:  # the method's Config default
        config_cls = getattr(get_method(cfg.method), "Config", None)
        default = getattr(config_cls(), "sampler", None) if config_cls is not None else None
        before = getattr(default, "kind", None)
    if sampler["kind"] == before:
        return {}
    from bench.sampling.sampler import kind_step_settings

    steps = {f: v for f, v in kind_step_settings(str(sampler["kind"])).items() if f not in sampler}
    return {"method_cfg": {"sampler": steps}} if steps else {}


def run_plugins(cfg: RunConfig) -> list[dict[str, Any]]:
    """Each plugin package that provides a part of the run: its method, dataset, architecture and
    sampler kind (``{"kind", "name", "package", "version", "module", "source_sha256"}``);
    trilemma-bench's own parts are left out. The record lists them as it lists torch; evaluation
    adds the metrics' and the protocol's."""
    from bench.core.registry import provider
    from bench.data import DATASETS
    from bench.models import ARCHS

    parts = [
        ("method", cfg.method, get_method(cfg.method)),
        ("dataset", cfg.data.dataset, DATASETS.get(cfg.data.dataset)),
        ("arch", cfg.model.arch, ARCHS.get(cfg.model.arch)),
    ]
    kind = (
        (cfg.method_cfg.get("sampler") or {}).get("kind")
        if isinstance(cfg.method_cfg, dict)
        else None
    )
    if kind:
        from bench.sampling import SAMPLERS

        parts.append(("sampler", kind, SAMPLERS.get(kind).run))
    out = []
    for what, name, obj in parts:
        prov = provider(getattr(obj, "factory", obj))  # a pattern family (npz:PATH): its factory
        if prov:
            out.append({"kind": what, "name": name, **prov, "source_sha256": source_digest(prov)})
    return out


def source_digest(prov: dict[str, Any]) -> str | None:
    """The sha256 of the ``.py`` files (by path) of the package or module that ``prov`` names: an
    editable install keeps its version while its code changes. None for code with no file."""
    import hashlib
    import sys
    from pathlib import Path

    module = sys.modules.get(prov["module"].split(".")[0])  # imported: it registered the part
    roots = [Path(d) for d in getattr(module, "__path__", None) or ()]
    files = [(r, f) for r in roots for f in sorted(r.rglob("*.py"))]
    origin = getattr(module, "__file__", None)
    if not roots and origin and origin.endswith(".py"):
        files = [(Path(origin).parent, Path(origin))]
    if not files:
        return None
    h = hashlib.sha256()
    for root, f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def unflatten(key: str, value: Any) -> dict[str, Any]:
    """``("data.dataset", "cifar10")`` -> ``{"data": {"dataset": "cifar10"}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value
