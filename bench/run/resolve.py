"""Resolve a run's config: method defaults, presets, a ``--config`` file and ``--set`` items.

Order (later wins):

1. the dataclass defaults of ``bench/core/config.py`` (the specification's);
2. the method's reference settings (``Method.run_defaults``);
3. the preset's common part (``presets/<preset>.yaml``, section ``config:``);
4. the method's own variant of the preset (``presets/methods/<method>.yaml``, section ``<preset>:``);
5. a config file (``--config``);
6. ``--set key=value`` items and the flags ``--dataset``, ``--arch``, ``--seed``, ``--device``.

Layers 1-4 are what a method "is" under a preset; :func:`preset_changes` lists every setting in
which a run departs from them (its ``--config`` and ``--set`` choices), and :func:`variant_changes`
those in which layer 4 departs from layers 1-3 (the method's own budget under the preset); the
runner stores both in the record when the run starts. This module sits above the plugin packages (it looks up
the method and the protocol); ``bench/core/config.py`` below them holds the schema alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from bench.core.config import (
    CUDA_GRAPH_MODES,
    RunConfig,
    check_compile,
    deep_merge,
    parse_set,
    to_dict,
    update_dataclass,
    validate,
)
from bench.core.errors import BenchError
from bench.train.loggers import check_logger_names
from methods import METHODS, get_method
from metrics import get_protocol

PRESET_DIR = Path(__file__).parent / "presets"
PRESET_KEYS = frozenset({"description", "config"})
# settings chosen by their own flags or shown in their own columns, never listed as changes
NOT_CHANGES = frozenset(
    {
        "method",
        "preset",
        "seed",
        "device",
        "data.dataset",
        "data.data_dir",
        "model.arch",
        "train.loggers",
    }
)

# settings that change how a run reports itself, not what it trains: left out of variant_changes
BOOKKEEPING = frozenset(
    {"train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "method.grid_size"}
)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def load_preset(name: str, method: str = "<method>") -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise BenchError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    data = _read_yaml(path)
    unknown = sorted(set(data) - PRESET_KEYS)
    if unknown:
        raise BenchError(
            f"preset file {path} has unknown sections {', '.join(unknown)}: a preset holds "
            f"{' and '.join(sorted(PRESET_KEYS))}; per-method settings go in "
            f"presets/methods/{method}.yaml under {name}:"
        )
    return data


def method_preset_file(method: str) -> Path | None:
    """The built-in file of a method's preset variants, ``presets/methods/<method>.yaml``. A method
    registered as a subclass of another (``trades-awp`` of ``trades``) without a file of its own
    takes its nearest registered ancestor's: it has the same settings to size. A class on the way
    that ships its own ``presets`` mapping (a plugin subclassing a built-in method) stops the search."""
    cls = get_method(method)
    for klass in getattr(cls, "__mro__", (cls,)):
        own_name = method if klass is cls else vars(klass).get("name")
        if own_name and (PRESET_DIR / "methods" / f"{own_name}.yaml").is_file():
            return PRESET_DIR / "methods" / f"{own_name}.yaml"
        if vars(klass).get("presets"):
            return None
    return None


def method_preset(method: str, preset: str) -> dict[str, Any]:
    """A method's own variant of a preset: section ``<preset>:`` of its built-in file
    (:func:`method_preset_file`), else of the method class's ``presets`` mapping (how a plugin
    package ships its variants: ``presets = {"demo": {"method": {"steps": 3}}, ...}``)."""
    path = method_preset_file(method)
    if path is not None:
        return _read_yaml(path).get(preset) or {}
    cls = get_method(method)
    own = getattr(cls, "presets", None) or {}
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


def _preset_layers(method: str, preset: str, variant: bool = True) -> RunConfig:
    """Layers 1-4: what ``method`` is under ``preset``, before any file or ``--set`` (1-3 without
    ``variant``: the method's reference settings under the preset every method shares)."""
    method_cls = get_method(method)
    cfg = RunConfig(method=method, preset=preset)
    cfg = update_dataclass(cfg, sections(getattr(method_cls, "run_defaults", {}) or {}))
    cfg = update_dataclass(cfg, sections(load_preset(preset, method).get("config", {}) or {}))
    return update_dataclass(cfg, sections(method_preset(method, preset))) if variant else cfg


def _finish(cfg: RunConfig) -> RunConfig:
    """The method's own config typed, validated and filled in; the whole config validated."""
    method_cfg = get_method(cfg.method).make_config(cfg.method_cfg)
    cfg = dataclasses.replace(cfg, method_cfg=to_dict(method_cfg))
    validate(cfg)
    if (
        cfg.train.compile in CUDA_GRAPH_MODES
    ):  # the method's part of the check: before anything is written
        safe = [n for n in METHODS.names() if getattr(METHODS.get(n), "cuda_graph_safe", False)]
        check_compile(
            cfg.train,
            cfg.device,
            cfg.method,
            getattr(get_method(cfg.method), "cuda_graph_safe", False),
            safe,
        )
    check_logger_names(cfg.train.loggers)
    if cfg.eval.enabled:  # an unknown protocol would only fail after training
        get_protocol(cfg.eval.protocol)
    return cfg


def resolve_config(
    method: str,
    preset: str = "cpu",
    dataset: str | None = None,
    arch: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Build and validate the run config (see the module docstring for the order)."""
    cfg = _preset_layers(method, preset)
    from_file = load_config_file(config_file) if config_file else {}
    cli: dict[str, Any] = {}
    for item in overrides:
        cli = deep_merge(cli, parse_set(item))
    cfg = update_dataclass(cfg, _switched_sampler_steps(cfg, deep_merge(from_file, sections(cli))))
    if from_file:
        cfg = update_dataclass(cfg, from_file)
    for key, value in (("seed", seed), ("device", device)):
        if value is not None:
            cli[key] = value
    if dataset is not None:
        cli = deep_merge(cli, {"data": {"dataset": dataset}})
    if arch is not None:
        cli = deep_merge(cli, {"model": {"arch": arch}})
    cfg = update_dataclass(cfg, cli)
    for key, chosen in (("method", method), ("preset", preset)):
        got = getattr(cfg, key)
        if (
            got != chosen
        ):  # e.g. `method: pgd-at` in a --config file: it would not switch the method's code
            raise BenchError(
                f"{key} {got!r} set in a config file or --set differs from --{key} {chosen}; "
                f"choose it with --{key} {got} instead"
            )
    return _finish(cfg)


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
    sampler kind (``{"kind", "name", "package", "version", "module"}``); trilemma-bench's own parts
    are left out. The record lists them as it lists torch; evaluation adds the metrics' and the protocol's."""
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
        prov = provider(
            getattr(obj, "factory", obj)
        )  # a pattern family (npz:PATH): the factory behind it
        if prov:
            out.append({"kind": what, "name": name, **prov})
    return out


def config_sources(
    method: str,
    preset: str,
    config_file: str | None = None,
    cli_keys: list[str] | tuple[str, ...] = (),
) -> dict[str, str]:
    """Which layer set each setting last (see the module docstring): ``method`` (its reference
    settings), ``preset <p>``, ``preset <p> of <method>``, ``--config`` or ``--set/flags``;
    a setting in none of them keeps the specification's default."""
    method_cls = get_method(method)
    layers = [
        ("method", sections(getattr(method_cls, "run_defaults", {}) or {})),
        (f"preset {preset}", sections(load_preset(preset, method).get("config", {}) or {})),
        (f"preset {preset} of {method}", sections(method_preset(method, preset))),
    ]
    if config_file:
        layers.append(("--config", load_config_file(config_file)))
    src: dict[str, str] = {}
    for name, layer in layers:
        for key in flatten(layer):
            src[key] = name
    for key in cli_keys:
        src[key] = "--set/flags"
    return src


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


def preset_changes(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a resolved config (as stored in a record) that differ from what its method
    and preset give (its ``--config`` / ``--set`` choices), as ``{"optim.lr": 0.01, ...}``."""
    ref = _finish(
        update_dataclass(
            _preset_layers(config["method"], config["preset"]),
            {
                "data": {"dataset": config["data"]["dataset"]},
                "model": {"arch": config["model"]["arch"]},
            },
        )
    )
    ran, now = (
        flatten(json.loads(json.dumps(config))),
        flatten(json.loads(json.dumps(ref.to_dict()))),
    )
    return {
        k: v for k, v in sorted(ran.items()) if k not in NOT_CHANGES and k in now and now[k] != v
    }


def variant_changes(method: str, preset: str) -> dict[str, Any]:
    """The settings in which ``method``'s own variant of ``preset`` (layer 4: ``presets/methods/<method>.yaml``
    or a plugin's ``presets``) departs from the preset every method shares (layers 1-3), as
    ``{"method.steps": 3, ...}``: the budget the method gets beyond the common one, which a fair
    comparison must see beside the ``--set`` changes."""
    shared = flatten(_finish(_preset_layers(method, preset, variant=False)).to_dict())
    own = flatten(_finish(_preset_layers(method, preset)).to_dict())
    return {
        k: v
        for k, v in sorted(own.items())
        if k not in NOT_CHANGES | BOOKKEEPING and shared.get(k) != v
    }


# What `bench run --resume RUN --set ...` may change: how training continues after a divergence
# (learning rate, divergence policy), how often it checkpoints, where its data files are, and how it
# is evaluated. Everything else defines what the weights so far were trained on and stays as recorded.
RESUME_OVERRIDABLE = (
    "optim.lr",
    "train.on_divergence",
    "train.max_rollbacks",
    "train.rollback_lr_factor",
    "train.divergence_bound",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.loggers",
    "data.data_dir",
    "eval.",
)


def _overridable(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_OVERRIDABLE)


def resume_overrides(
    cfg: RunConfig, overrides: list[str] | tuple[str, ...]
) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with the ``--set`` items of a resume applied, and what they changed
    (``{"optim.lr": {"from": 0.1, "to": 0.01}}``). Only :data:`RESUME_OVERRIDABLE` settings may change."""
    cli: dict[str, Any] = {}
    for item in overrides:
        cli = deep_merge(cli, parse_set(item))
    keys = list(flatten(cli))
    refused = [k for k in keys if not _overridable(k)]
    if refused:
        allowed = ", ".join(s + "*" if s.endswith(".") else s for s in RESUME_OVERRIDABLE)
        raise BenchError(
            f"--resume cannot change {', '.join(refused)} (the weights so far were trained with the "
            f"recorded value); on resume only {allowed} may change; start a new run for the rest"
        )
    new = _finish(update_dataclass(cfg, cli))
    before, after = flatten(cfg.to_dict()), flatten(new.to_dict())
    return new, {
        k: {"from": before.get(k), "to": after.get(k)}
        for k in keys
        if before.get(k) != after.get(k)
    }
