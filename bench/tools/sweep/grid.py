"""The grid of a sweep spec: its cells, each the arguments of one `bench run`, and their configs
resolved by the same code as `bench run`'s (docs/scale.md)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from bench.core.errors import BenchError
from bench.tools.sweep.spec import RUN_AXES, SweepSpec, set_value


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
        d = {"index": self.index, "key": self.key, **asdict(self)}
        return d | {"values": dict(self.values), "overrides": list(self.overrides)}


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
        run = {k: values.get(k, getattr(b, k)) for k in RUN_AXES}
        run["preset"] = run["preset"] or "paper"  # bench run's default
        cells.append(Cell(len(cells), tuple(values.items()), **run, overrides=tuple(sets)))
    if not cells:
        raise BenchError(
            f"{spec.path}: the grid is empty: exclude leaves out every combination of the axes"
        )
    return cells


def resolve_cells(spec: SweepSpec, cells: list[Cell]) -> list:
    """Each cell's RunConfig, resolved and checked as `bench run` would (one line naming the cell)."""
    from bench.run.resolve import resolve_config

    out, b = [], spec.base
    for c in cells:
        run = {k: getattr(c, k) for k in RUN_AXES[1:]}
        try:
            cfg = resolve_config(
                c.method, **run, device=b.device, config_file=b.config, overrides=list(c.overrides)
            )
        except BenchError as exc:
            raise BenchError(f"{spec.path}: cell {c.key}: {exc}") from None
        out.append(cfg)
    return out
