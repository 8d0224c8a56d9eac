"""A sweep spec, the YAML file behind `bench sweep` (its keys are in docs/scale.md and
docs/examples/sweep.yaml), as typed dataclasses, and the grid of cells it expands to. Everything is
checked before anything is written or submitted, each problem as one BenchError line; every cell's
config is resolved by the same code as `bench run`'s."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bench.core.config import parse_set, to_dict, update_dataclass
from bench.core.errors import BenchError

LAUNCHERS = ("local", "slurm")
RUN_AXES = (
    "method",
    "seed",
    "dataset",
    "arch",
    "preset",
)  # `bench run` arguments; others: --set keys
SPEC_KEYS = ("name", "base", "axes", "exclude", "retries", "launcher")
BASE_KEYS = ("method", "seed", "dataset", "preset", "arch", "config", "data_dir", "device", "set")


@dataclass
class LocalSettings:
    """Cells run as processes on this machine, at most ``max_parallel`` at a time."""

    max_parallel: int = 1
    timeout_min: int = (
        7 * 24 * 60
    )  # submitit's local time limit per job (it signals, then requeues)


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


@dataclass(frozen=True)
class Cell:
    """One point of the grid: the axis values, and the `bench run` arguments they give."""

    index: int
    values: tuple[tuple[str, Any], ...]
    method: str
    seed: int | None
    dataset: str | None
    arch: str | None
    preset: str
    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        return " ".join(f"{k}={set_value(v)}" for k, v in self.values)

    def to_dict(self) -> dict[str, Any]:
        d = {"index": self.index, "key": self.key} | {
            f.name: getattr(self, f.name) for f in fields(self)
        }
        return d | {"values": dict(self.values), "overrides": list(self.overrides)}


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
        ident = {
            "name": self.name,
            "base": to_dict(self.base),
            "axes": axes,
            "exclude": self.exclude,
        }
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


def _mapping(value: Any, where: str, path: Path, allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BenchError(f"{path}: {where} must be a mapping (key: value lines)")
    unknown = [str(k) for k in value if allowed and k not in allowed]
    if unknown:
        raise BenchError(
            f"{path}: unknown key {', '.join(unknown)} in {where}; allowed: {', '.join(allowed)}"
        )
    return value


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _base(d: dict[str, Any], path: Path) -> Base:
    sets = () if d.get("set") is None else d["set"]
    if isinstance(sets, dict):
        sets = [f"{k}={set_value(v)}" for k, v in sets.items()]
    elif not (isinstance(sets, (list, tuple)) and all(isinstance(v, str) for v in sets)):
        raise BenchError(
            f"{path}: base.set must be a list of KEY=VALUE items or a mapping {{KEY: VALUE}}"
        )
    for item in sets:
        parse_set(item)  # malformed items fail here, in one line
    seed = d.get("seed")
    if seed is not None and not _non_negative_int(seed):
        raise BenchError(f"{path}: base.seed must be a non-negative integer, got {seed!r}")
    names = ("dataset", "arch", "config", "data_dir", "device", "preset")
    text = {k: None if d.get(k) is None else str(d[k]) for k in names}
    return Base(method=str(d.get("method") or ""), seed=seed, sets=tuple(sets), **text)


def _axes(d: dict[str, Any], base: Base, path: Path) -> list[tuple[str, list[Any]]]:
    if not d:
        raise BenchError(
            f"{path}: the spec has no axes; add e.g. axes: {{method: [ce, pgd-at], seed: [0, 1]}}"
        )
    base_keys = {item.partition("=")[0].strip() for item in base.sets}
    for key, values in d.items():
        where = f"{path}: axis {key}"
        if key not in RUN_AXES and "." not in str(key):
            raise BenchError(
                f"{path}: unknown axis {key!r}; an axis is one of {', '.join(RUN_AXES)} or a --set "
                "key such as optim.lr"
            )
        if key in base_keys:
            raise BenchError(f"{path}: {key} is set in base.set and is also an axis; keep one")
        if key in RUN_AXES and getattr(base, key) not in (None, ""):
            raise BenchError(f"{path}: {key} is given in base and is also an axis; keep one")
        if not isinstance(values, list):
            raise BenchError(f"{where} must be a list of values, e.g. {key}: [a, b]")
        if not values:
            raise BenchError(f"{where} has no values, so the grid is empty; give at least one")
        shown = [set_value(v) for v in values]
        repeated = sorted({s for s in shown if shown.count(s) > 1})
        if repeated:
            raise BenchError(f"{where} repeats {', '.join(repeated)}; list each value once")
        if key == "seed" and not all(_non_negative_int(v) for v in values):
            raise BenchError(f"{where} takes non-negative integers, got {values!r}")
        if key in RUN_AXES and key != "seed" and not all(isinstance(v, str) for v in values):
            raise BenchError(f"{where} takes names, got {values!r}")
    if not base.method and "method" not in d:
        raise BenchError(
            f"{path}: no method: give base.method or an axis method: [ce, pgd-at, ...]"
        )
    return [(str(k), list(v)) for k, v in d.items()]


def _exclude(value: Any, axes: list[tuple[str, list[Any]]], path: Path) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) and e for e in value):
        raise BenchError(
            f"{path}: exclude must be a list of mappings such as {{method: ce, seed: 1}}"
        )
    known = dict(axes)
    for entry in value:
        for k, v in entry.items():
            if k not in known:
                raise BenchError(
                    f"{path}: exclude entry {entry} names {k!r}, which is not an axis "
                    f"({', '.join(known)})"
                )
            if set_value(v) not in {set_value(a) for a in known[k]}:
                raise BenchError(f"{path}: exclude entry {entry}: {v!r} is not a value of axis {k}")
    return value


def _slurm(d: dict[str, Any], path: Path) -> SlurmSettings:
    s = update_dataclass(SlurmSettings(), d, "launcher.slurm.")
    where = f"{path}: launcher.slurm"
    if not s.partition.strip():
        raise BenchError(f"{where} has no partition; add partition: NAME (sinfo lists them)")
    slurm_minutes(s.time, "launcher.slurm.time")
    if s.nproc < 1 or s.array_parallelism < 1:
        raise BenchError(f"{where}.nproc and array_parallelism must be at least 1")
    if min(s.gpus_per_run, s.cpus_per_run, s.max_requeues) < 0 or s.mem_gb < 0:
        raise BenchError(
            f"{where} gpus_per_run, cpus_per_run, mem_gb and max_requeues cannot be negative"
        )
    if 0 < s.gpus_per_run < s.nproc:
        raise BenchError(
            f"{where}.nproc {s.nproc} needs a GPU per process; set gpus_per_run to at least "
            f"{s.nproc}"
        )
    return s


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file (one line on any problem)."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(
            f"sweep spec {str(path)!r} not found; pass a YAML file (see docs/scale.md)"
        )
    text = p.read_text()
    try:
        data = yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        raise BenchError(f"{p}: not valid YAML ({str(exc).splitlines()[0]}); fix its syntax")
    if not isinstance(data, dict):
        raise BenchError(
            f"{p}: a sweep spec is a mapping with base:, axes: and launcher: (see docs/scale.md)"
        )
    _mapping(data, "the spec", p, SPEC_KEYS)
    name = str(data.get("name") or p.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise BenchError(
            f"{p}: name {name!r} must be letters, digits and . _ + - (it names the sweep's directory)"
        )
    base = _base(_mapping(data.get("base"), "base", p, BASE_KEYS), p)
    axes = _axes(_mapping(data.get("axes"), "axes", p), base, p)
    exclude = _exclude(data.get("exclude"), axes, p)
    retries = data.get("retries", 2)
    if not _non_negative_int(retries):
        raise BenchError(f"{p}: retries must be a non-negative integer, got {retries!r}")
    launcher = _mapping(data.get("launcher"), "launcher", p)
    for key in launcher:
        if key not in (*LAUNCHERS, "default"):
            raise BenchError(
                f"{p}: unknown launcher {key!r} under launcher:; choose {' or '.join(LAUNCHERS)}"
            )
    default = str(launcher.get("default") or "local")
    if default not in LAUNCHERS:
        raise BenchError(
            f"{p}: unknown launcher {default!r} in launcher.default; choose {' or '.join(LAUNCHERS)}"
        )
    local = _mapping(launcher.get("local"), "launcher.local", p)
    local = update_dataclass(LocalSettings(), local, "launcher.local.")
    if local.max_parallel < 1 or local.timeout_min < 1:
        raise BenchError(f"{p}: launcher.local.max_parallel and timeout_min must be at least 1")
    slurm = launcher.get("slurm")
    return SweepSpec(
        path=p,
        text=text,
        name=name,
        base=base,
        axes=axes,
        exclude=exclude,
        retries=retries,
        default_launcher=default,
        local=local,
        slurm=_slurm(_mapping(slurm, "launcher.slurm", p), p) if "slurm" in launcher else None,
    )


def expand(spec: SweepSpec) -> list[Cell]:
    """The grid: every combination of the axes' values (first axis slowest), less the exclusions."""
    b, cells = spec.base, []
    for combo in itertools.product(*(v for _, v in spec.axes)):
        values = dict(zip((k for k, _ in spec.axes), combo))
        if any(
            all(set_value(values[k]) == set_value(v) for k, v in e.items()) for e in spec.exclude
        ):
            continue
        sets = [*b.sets, *([f"data.data_dir={b.data_dir}"] if b.data_dir else [])]
        sets += [f"{k}={set_value(v)}" for k, v in values.items() if k not in RUN_AXES]
        cells.append(
            Cell(
                index=len(cells),
                values=tuple(values.items()),
                method=values.get("method", b.method),
                seed=values.get("seed", b.seed),
                dataset=values.get("dataset", b.dataset),
                arch=values.get("arch", b.arch),
                preset=values.get("preset", b.preset or "paper"),
                overrides=tuple(sets),
            )
        )
    if not cells:
        raise BenchError(
            f"{spec.path}: the grid is empty: exclude leaves out every combination of the axes"
        )
    return cells


def resolve_cells(spec: SweepSpec, cells: list[Cell]) -> list:
    """Each cell's RunConfig, resolved and checked as `bench run` would (one line naming the cell)."""
    from bench.run.resolve import resolve_config

    out = []
    for c in cells:
        try:
            out.append(
                resolve_config(
                    c.method,
                    preset=c.preset,
                    dataset=c.dataset,
                    arch=c.arch,
                    seed=c.seed,
                    device=spec.base.device,
                    config_file=spec.base.config,
                    overrides=list(c.overrides),
                )
            )
        except BenchError as exc:
            raise BenchError(f"{spec.path}: cell {c.key}: {exc}") from None
    return out


def settings_lines(settings: LocalSettings | SlurmSettings) -> list[str]:
    return [f"{f.name}: {getattr(settings, f.name)}" for f in fields(settings)]
