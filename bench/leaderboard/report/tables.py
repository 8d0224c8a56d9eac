"""The points of each protocol's trade-off plane (clean accuracy, the strongest attack's robust
accuracy, a generation score), from the leaderboard `bench compare` shows, seeds folded into one
point; docs/report.md describes the plane."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.leaderboard.compare import protocol_rank

GENERATION_METRICS = (
    "fid",
    "kid",
)  # the plane's colour: the first one a protocol has (lower: better)
# rows measured here: runs trained here, and external models (a RobustBench zoo entry) evaluated here
MEASURED_KINDS = ("measured", "external")


@dataclass
class PlanePoint:
    label: str  # method (and changes) of a measured group, the row name of a reported one
    kind: str  # measured | external (a zoo model evaluated here) | reported
    run_id: str  # the run (or "N runs" for a group of seeds, or the reported row's name)
    clean: float
    robust: float
    clean_err: float | None = None  # 95 % t half-width over seeds
    robust_err: float | None = None
    generation: float | None = None
    seeds: int = 1
    reliable: str | None = None  # yes | no | unchecked | reported
    attack: str = ""  # the column of the robust number, e.g. autoattack
    changes: str = ""  # the settings in which a measured group departs from its preset


@dataclass
class Plane:
    protocol: str
    dataset: str
    clean_column: str
    attacks: list[str]  # the robust columns used, strongest first
    generation_column: str | None
    points: list[PlanePoint] = field(default_factory=list)
    n_examples: dict[str, list[int]] = field(default_factory=dict)  # column -> its sample counts

    @property
    def measured(self) -> list[PlanePoint]:
        """The points measured here (trained runs and evaluated zoo models), not the reported ones."""
        return [p for p in self.points if p.kind in MEASURED_KINDS]

    def pareto(self) -> list[PlanePoint]:
        """Measured points no other measured point beats on both accuracies, by clean accuracy."""
        return _front(self.measured, lambda p: (p.clean, p.robust))

    def pareto3(self) -> list[PlanePoint]:
        """The trilemma's front: measured points with a generation score that no other such point
        beats on all three axes at once (clean and robust accuracy higher, FID/KID lower), by clean
        accuracy. Points without a generation score take no part."""
        pts = [p for p in self.measured if p.generation is not None]
        return _front(pts, lambda p: (p.clean, p.robust, -p.generation))


def _front(points: list[PlanePoint], axes) -> list[PlanePoint]:
    """The points no other point beats (at least as good on every axis, better on one)."""

    def beats(q: PlanePoint, p: PlanePoint) -> bool:
        return all(a >= b for a, b in zip(axes(q), axes(p))) and axes(q) != axes(p)

    front = [p for p in points if not any(beats(q, p) for q in points)]
    return sorted(front, key=lambda p: p.clean)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _base(meta: dict[str, Any]) -> str:
    return str(meta["metric"]).split("[")[0]


def _changes(row: pd.Series) -> str:
    changes = row.get("changes")
    missing = changes is None or (isinstance(changes, float) and math.isnan(changes))
    return "" if missing or row.get("kind") == "reported" else str(changes)


def _tell_apart(points: list[PlanePoint]) -> None:
    """A method measured under several settings gets a letter per setting: ``pgd-at (a)``."""
    by_method: dict[str, list[PlanePoint]] = {}
    for p in points:
        if p.kind == "measured":
            by_method.setdefault(p.label, []).append(p)
    for same in by_method.values():
        variants = list(dict.fromkeys(p.changes for p in same))
        if len(variants) > 1:
            for p in same:
                p.label += f" ({chr(ord('a') + variants.index(p.changes))})"


def _counts(df: pd.DataFrame, column: str) -> list[int]:
    name = f"{column} n"
    return sorted({int(v) for v in df[name].dropna()}) if name in df.columns else []


def planes(df: pd.DataFrame, meta: dict[str, dict[str, Any]]) -> list[Plane]:
    """One plane per protocol and dataset that have a measured run with both a clean accuracy and an
    attack, never mixing protocols or datasets; reported rows join the planes of their own dataset.

    ``df`` is the leaderboard (measured rows grouped over seeds, reported rows as published) and
    ``meta`` its column metadata (``bench.leaderboard.compare``)."""
    kind = df["kind"] if "kind" in df.columns else pd.Series("measured", index=df.index)
    measured = df.loc[kind.isin(MEASURED_KINDS), "dataset"].dropna().astype(str)
    protocols = sorted({m["protocol"] for m in meta.values()}, key=protocol_rank)
    found = (
        _plane(df[df["dataset"].astype(str) == dataset], meta, proto, dataset)
        for proto in protocols
        for dataset in dict.fromkeys(measured)
    )
    return [plane for plane in found if plane is not None and plane.measured]


def _plane(
    df: pd.DataFrame, meta: dict[str, dict[str, Any]], proto: str, dataset: str
) -> Plane | None:
    cols = {
        c: m
        for c, m in meta.items()
        if m["protocol"] == proto and c in df.columns and df[c].notna().any()
    }
    clean = [c for c, m in cols.items() if _base(m) == "clean" and "[" not in m["metric"]]
    attacks = sorted((c for c, m in cols.items() if m["checked"]), key=lambda c: -cols[c]["order"])
    if not clean or not attacks:
        return None
    gen = next((c for g in GENERATION_METRICS for c, m in cols.items() if _base(m) == g), None)
    plane = Plane(proto, dataset, clean[0], attacks, gen)
    used: set[str] = set()
    for _, row in df.iterrows():
        c = _num(row[clean[0]])
        attack = next((a for a in attacks if _num(row[a]) is not None), None)
        if c is None or attack is None:
            continue
        used.add(attack)
        reliable = row.get(f"{attack} reliable")
        plane.points.append(
            PlanePoint(
                label=str(row["run_id"] if row.get("kind") == "reported" else row["method"]),
                kind=str(row.get("kind") or "measured"),
                run_id=str(row["run_id"]),
                clean=c,
                robust=_num(row[attack]),
                clean_err=_num(row.get(f"{clean[0]} ±")),
                robust_err=_num(row.get(f"{attack} ±")),
                generation=_num(row[gen]) if gen else None,
                seeds=int(_num(row.get("seeds")) or 1),
                reliable=reliable if isinstance(reliable, str) else None,
                attack=cols[attack]["label"],
                changes=_changes(row),
            )
        )
    _tell_apart(plane.points)
    plane.attacks = [a for a in attacks if a in used]
    counted = [clean[0], *plane.attacks] + ([gen] if gen else [])
    plane.n_examples = {c: _counts(df, c) for c in counted}
    return plane


def describe_counts(counts: list[int]) -> str:
    if not counts:
        return "n ?"
    return f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}–{counts[-1]}"
