"""A sweep spec, the YAML file behind `bench sweep`, read into typed dataclasses and checked before
anything is written or submitted, each problem as one BenchError line. Its keys are in
docs/scale.md and docs/examples/sweep.yaml; ``grid.py`` expands it into cells."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bench.core.config import parse_set, to_dict, update_dataclass
from bench.core.errors import BenchError

LAUNCHERS = ("local", "slurm")
# axes that are `bench run` arguments; any other axis is a --set key
RUN_AXES = ("method", "seed", "dataset", "arch", "preset")
SPEC_KEYS = ("name", "base", "axes", "exclude", "retries", "launcher")
BASE_KEYS = ("method", "seed", "dataset", "preset", "arch", "config", "data_dir", "device", "set")


@dataclass
class LocalSettings:
    """Cells run as processes on this machine, at most ``max_parallel`` at a time."""

    max_parallel: int = 1
    # submitit's local time limit per job (it signals, then requeues)
    timeout_min: int = 7 * 24 * 60


@dataclass
class SlurmSettings:
    """One SLURM array job; each array task is one cell, one run."""

    partition: str = ""
    gpus_per_run: int = 1
    cpus_per_run: int = 0  # 0: the cluster's default
    mem_gb: float = 0.0  # 0: the cluster's default
    time: str = "24:00:00"  # per job: minutes, HH:MM:SS or D-HH:MM:SS; a longer run is requeued
    account: str = ""
    nproc: int = 1  # data-parallel processes per run (one per GPU), as `bench run --nproc`
    array_parallelism: int = 16  # array tasks running at once
    max_requeues: int = 10  # requeues after a time limit (preemptions do not count)
    setup: list[str] = field(default_factory=list)  # shell lines before the job: module load cuda


@dataclass
class Base:
    method: str = ""
    seed: int | None = None
    dataset: str | None = None
    preset: str | None = None  # None: `bench run`'s default (paper), unless preset is an axis
    arch: str | None = None
    config: str | None = None
    data_dir: str | None = None
    device: str | None = None
    sets: tuple[str, ...] = ()


@dataclass
class SweepSpec:
    path: Path
    text: str
    name: str
    base: Base
    axes: list[tuple[str, list[Any]]]
    exclude: list[dict[str, Any]]
    retries: int = 2
    default_launcher: str = "local"
    local: LocalSettings = field(default_factory=LocalSettings)
    slurm: SlurmSettings | None = None

    @property
    def digest(self) -> str:
        """What makes two specs the same sweep: the name, base, axes (in order) and exclusions.
        Launcher settings and retries may change between submissions of one sweep."""
        axes = [[k, v] for k, v in self.axes]
        ident = dict(name=self.name, base=to_dict(self.base), axes=axes, exclude=self.exclude)
        text = json.dumps(ident, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def settings(self, launcher: str) -> LocalSettings | SlurmSettings:
        if launcher not in LAUNCHERS:
            raise BenchError(f"unknown launcher {launcher!r}; choose {' or '.join(LAUNCHERS)}")
        if launcher == "local":
            return self.local
        if self.slurm is None:
            raise BenchError(
                f"{self.path} has no launcher.slurm settings; add at least "
                "launcher: {slurm: {partition: NAME}}"
            )
        return self.slurm


def set_value(v: Any) -> str:
    """An axis value as written after ``key=`` in a ``--set`` item (and in a cell's key)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v)


def slurm_minutes(text: str, where: str) -> int:
    """SLURM's time formats ``MINUTES``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]`` as whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m or (m.group(1) is None and m.group(3) is not None and m.group(4) is None):
        raise BenchError(
            f"{where} {text!r} is not a time; write minutes (1440), HH:MM:SS (24:00:00) or "
            "D-HH:MM:SS (2-00:00:00)"
        )
    days, first, second, third = (int(g) if g else 0 for g in m.groups())
    plain = m.group(1) is None and m.group(3) is None
    minutes = float(first) if plain else days * 1440 + first * 60 + second + third / 60
    if minutes <= 0:
        raise BenchError(f"{where} {text!r} must be longer than zero")
    return int(-(-minutes // 1))


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.2's reading of ``24:00:00`` (a string), not YAML 1.1's base-60 integer (86400)."""


_SpecLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:int"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _check(ok: Any, message: str) -> None:
    if not ok:
        raise BenchError(message)


def _mapping(value: Any, where: str, path: Path, allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    value = {} if value is None else value
    _check(isinstance(value, dict), f"{path}: {where} must be a mapping (key: value lines)")
    unknown = ", ".join(str(k) for k in value if allowed and k not in allowed)
    _check(not unknown, f"{path}: unknown key {unknown} in {where}; allowed: {', '.join(allowed)}")
    return value


def _index(value: Any) -> bool:  # a non-negative integer
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _base(d: dict[str, Any], p: Path) -> Base:
    sets = () if d.get("set") is None else d["set"]
    if isinstance(sets, dict):
        sets = [f"{k}={set_value(v)}" for k, v in sets.items()]
    ok = isinstance(sets, (list, tuple)) and all(isinstance(v, str) for v in sets)
    _check(ok, f"{p}: base.set must be a list of KEY=VALUE items or a mapping {{KEY: VALUE}}")
    for item in sets:
        parse_set(item)  # malformed items fail here, in one line
    seed = d.get("seed")
    _check(
        seed is None or _index(seed), f"{p}: base.seed must be a non-negative integer, got {seed!r}"
    )
    text = {k: None if d.get(k) is None else str(d[k]) for k in BASE_KEYS[2:-1]}
    return Base(method=str(d.get("method") or ""), seed=seed, sets=tuple(sets), **text)


def _axes(d: dict[str, Any], base: Base, p: Path) -> list[tuple[str, list[Any]]]:
    _check(d, f"{p}: the spec has no axes; add e.g. axes: {{method: [ce, pgd-at], seed: [0, 1]}}")
    base_keys = {item.partition("=")[0].strip() for item in base.sets}
    for key, values in d.items():
        axis = f"{p}: axis {key}"
        _check(
            key in RUN_AXES or "." in str(key),
            f"{p}: unknown axis {key!r}; an axis is one of {', '.join(RUN_AXES)} or a --set key "
            "such as optim.lr",
        )
        _check(key not in base_keys, f"{p}: {key} is set in base.set and is also an axis; keep one")
        given = key in RUN_AXES and getattr(base, key) not in (None, "")
        _check(not given, f"{p}: {key} is given in base and is also an axis; keep one")
        _check(isinstance(values, list), f"{axis} must be a list of values, e.g. {key}: [a, b]")
        _check(values, f"{axis} has no values, so the grid is empty; give at least one")
        shown = [set_value(v) for v in values]
        repeated = ", ".join(sorted({s for s in shown if shown.count(s) > 1}))
        _check(not repeated, f"{axis} repeats {repeated}; list each value once")
        if key == "seed":
            _check(all(map(_index, values)), f"{axis} takes non-negative integers, got {values!r}")
        elif key in RUN_AXES:
            _check(all(isinstance(v, str) for v in values), f"{axis} takes names, got {values!r}")
    ok = base.method or "method" in d
    _check(ok, f"{p}: no method: give base.method or an axis method: [ce, pgd-at, ...]")
    return [(str(k), list(v)) for k, v in d.items()]


def _exclude(value: Any, axes: list[tuple[str, list[Any]]], p: Path) -> list[dict[str, Any]]:
    value = [] if value is None else value
    ok = isinstance(value, list) and all(isinstance(e, dict) and e for e in value)
    _check(ok, f"{p}: exclude must be a list of mappings such as {{method: ce, seed: 1}}")
    known = dict(axes)
    for entry in value:
        for k, v in entry.items():
            names = ", ".join(known)
            _check(
                k in known,
                f"{p}: exclude entry {entry} names {k!r}, which is not an axis ({names})",
            )
            ok = set_value(v) in {set_value(a) for a in known[k]}
            _check(ok, f"{p}: exclude entry {entry}: {v!r} is not a value of axis {k}")
    return value


def _launchers(d: dict[str, Any], p: Path) -> tuple[str, LocalSettings, SlurmSettings | None]:
    choose = f"choose {' or '.join(LAUNCHERS)}"
    for key in d:
        known = key in (*LAUNCHERS, "default")
        _check(known, f"{p}: unknown launcher {key!r} under launcher:; {choose}")
    default = str(d.get("default") or "local")
    _check(default in LAUNCHERS, f"{p}: unknown launcher {default!r} in launcher.default; {choose}")
    local = _mapping(d.get("local"), "launcher.local", p)
    local = update_dataclass(LocalSettings(), local, "launcher.local.")
    ok = local.max_parallel >= 1 and local.timeout_min >= 1
    _check(ok, f"{p}: launcher.local.max_parallel and timeout_min must be at least 1")
    if "slurm" not in d:
        return default, local, None
    s = _mapping(d.get("slurm"), "launcher.slurm", p)
    s, where = update_dataclass(SlurmSettings(), s, "launcher.slurm."), f"{p}: launcher.slurm"
    _check(s.partition.strip(), f"{where} has no partition; add partition: NAME (sinfo lists them)")
    slurm_minutes(s.time, "launcher.slurm.time")
    ok = s.nproc >= 1 and s.array_parallelism >= 1
    _check(ok, f"{where}.nproc and array_parallelism must be at least 1")
    _check(
        min(s.gpus_per_run, s.cpus_per_run, s.max_requeues, s.mem_gb) >= 0,
        f"{where} gpus_per_run, cpus_per_run, mem_gb and max_requeues cannot be negative",
    )
    _check(
        not 0 < s.gpus_per_run < s.nproc,
        f"{where}.nproc {s.nproc} needs a GPU per process; set gpus_per_run to at least {s.nproc}",
    )
    return default, local, s


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file (one line on any problem)."""
    p = Path(path)
    _check(p.is_file(), f"sweep spec {str(path)!r} not found; pass a YAML file (see docs/scale.md)")
    text = p.read_text()
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        raise BenchError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}); fix its syntax")
    what = "a mapping with base:, axes: and launcher: (see docs/scale.md)"
    _check(isinstance(data, dict), f"{p}: a sweep spec is {what}")
    _mapping(data, "the spec", p, SPEC_KEYS)
    name = str(data.get("name") or p.stem)
    _check(
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name),
        f"{p}: name {name!r} must be letters, digits and . _ + - (it names the sweep's directory)",
    )
    base = _base(_mapping(data.get("base"), "base", p, BASE_KEYS), p)
    axes = _axes(_mapping(data.get("axes"), "axes", p), base, p)
    exclude = _exclude(data.get("exclude"), axes, p)
    retries = data.get("retries", 2)
    _check(_index(retries), f"{p}: retries must be a non-negative integer, got {retries!r}")
    launchers = _launchers(_mapping(data.get("launcher"), "launcher", p), p)
    return SweepSpec(p, text, name, base, axes, exclude, retries, *launchers)


def settings_lines(settings: LocalSettings | SlurmSettings) -> list[str]:
    return [f"{f.name}: {getattr(settings, f.name)}" for f in fields(settings)]
