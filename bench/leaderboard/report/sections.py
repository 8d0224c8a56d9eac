"""The sections of `bench report`, in page order (``SECTIONS``): each reads the selected runs,
saves its figures and returns its part of the page; docs/report.md describes what each shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import BenchError
from bench.leaderboard.compare_view import BRIEF_RUN_COLUMNS, MARK_NOTE, brief, short_id
from bench.leaderboard.grouping import group_seeds
from bench.leaderboard.report.figures import EnergyPanel, energy_panels, tradeoff, training_curves
from bench.leaderboard.report.page import Figures, Section, read_png
from bench.leaderboard.report.tables import planes

MAX_CURVE_RUNS = 10  # training curves of at most this many runs (the newest), to stay legible
MAX_GRIDS_PER_RUN = 3
TRADEOFF_CAPTION = (
    "Each panel is one protocol on one dataset (never mixed; reported rows only beside runs of "
    "their dataset). x: clean accuracy; y: robust accuracy under the strongest attack stored for "
    "the run; colour: FID or KID (lower is better; grey when none is stored); dashed: the Pareto "
    "front of what was measured here on the two accuracies; ringed: the runs no other run beats "
    "on all three axes at once (clean, robust, FID/KID), the trilemma's front; squares: external "
    "models (e.g. RobustBench's) evaluated here under the same protocol; hollow diamonds: "
    "reported numbers (not measured here); ×k and error bars: k seeds with the 95% t-interval; ! "
    "a number that failed a guardrail check."
)
ENERGY_CAPTION = (
    "E(x) = -logsumexp f(x) of clean test images, their PGD adversarial versions and generated "
    "samples, every run on one shared axis; gaps are mean E(adv) - mean E(clean) and mean E(gen) "
    "- mean E(clean), W1 the Wasserstein-1 distances."
)


@dataclass
class Runs:
    """What every section reads: the selected runs, their leaderboard and where they live."""

    records: list[dict[str, Any]]
    df: pd.DataFrame  # the leaderboard, filtered; reported rows included
    meta: dict[str, dict[str, Any]]
    protocols: list[str]  # the protocols shown, one panel or table each
    dirs: dict[str, Path]  # run id -> run directory

    def dir(self, rec: dict[str, Any]) -> Path | None:
        return self.dirs.get(rec["run_id"])


def _run_name(rec: dict[str, Any]) -> str:
    return f"{short_id(rec['run_id'])} {rec.get('method')} (seed {rec.get('seed')})"


def tradeoff_section(runs: Runs, figures: Figures, notes: list[str]) -> Section:
    sec = Section("Trade-off: accuracy, robustness, generation")
    shown = [
        p
        for p in planes(group_seeds(runs.df, runs.records), runs.meta)
        if p.protocol in runs.protocols
    ]
    if not shown:
        sec.paragraph(
            "No protocol has both a clean accuracy and an attack for these runs; "
            "bench eval RUN --protocol standard adds them."
        )
        notes.append(
            "no trade-off plane: no run has both clean and robust accuracy in one protocol"
        )
        return sec
    sec.figure(figures.save(tradeoff(shown), "tradeoff"), TRADEOFF_CAPTION, "trade-off plane")
    measured = {(pt.label, pt.changes) for p in shown for pt in p.points if pt.kind == "measured"}
    # a method measured under several settings is lettered, pgd-at (a): name each letter's settings
    for label, changes in sorted(v for v in measured if v[0].endswith(")")):
        sec.paragraph(f"{label}: {changes or 'the preset as it is'}", "caption")
    for p in shown:
        if p.generation_column is None:
            sec.paragraph(
                f"protocol {p.protocol}: no run has FID or KID stored, so no point is coloured "
                "(bench eval RUN --metrics fid,kid adds them; see bench fid-weights)"
            )
    return sec


def _cell(column: str, v: Any) -> Any:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    return str(int(v)) if column == "seed" and not isinstance(v, str) else v  # 0, not 0.0


def leaderboard_section(runs: Runs, figures: Figures, notes: list[str]) -> Section:
    sec = Section("Leaderboard")
    for proto in runs.protocols:
        try:
            table, caption = brief(runs.df, runs.meta, proto)
        except BenchError:  # the protocol has numbers only in rows the filter dropped
            continue
        numbers = [c for c in table.columns if c not in BRIEF_RUN_COLUMNS]  # rows with none go
        table = table[table[numbers].notna().any(axis=1)] if numbers else table.iloc[0:0]
        rows = [
            [_cell(c, v) for c, v in zip(table.columns, row)]
            for row in table.itertuples(index=False)
        ]
        kinds = list(table["kind"]) if "kind" in table.columns else [""] * len(table)
        classes = ["reported" if k == "reported" else "" for k in kinds]
        sec.heading(f"protocol {proto}")
        sec.table(list(table.columns), rows, classes)
        for line in caption[1:]:
            sec.paragraph(line, "caption")
    sec.paragraph(
        f"Accuracies in %. {MARK_NOTE}. Reported rows (italic) are published numbers, not measured "
        "here. The same numbers as bench compare --protocol P."
    )
    return sec


def _energy_result(rec: dict[str, Any], protocol: str) -> dict[str, Any] | None:
    """The run's ``energy`` result under ``protocol`` (else its first ``energy[...]`` variant)."""
    results = (rec.get("evaluations") or {}).get(protocol) or {}
    if isinstance(results.get("energy"), dict):
        return results["energy"]
    variants = (v for k, v in sorted(results.items()) if k.startswith("energy["))
    return next((v for v in variants if isinstance(v, dict)), None)


def _energy_values(run_dir: Path, res: dict[str, Any]) -> dict[str, np.ndarray] | None:
    rel = (res.get("artifacts") or {}).get("energy_values")
    if not rel:
        return None
    try:
        with np.load(run_dir / rel) as z:
            kinds = [k for k in ("clean", "adversarial", "generated") if k in z]
            return {k: np.asarray(z[k], dtype=np.float64) for k in kinds}
    except (OSError, ValueError, KeyError):
        return None


def _energy_title(rec: dict[str, Any], proto: str, res: dict[str, Any]) -> str:
    samples = res.get("samples")
    src = samples.get("source") if isinstance(samples, dict) else None
    return (
        f"{_run_name(rec)} · protocol {proto} · n clean/adv {res.get('n_examples')}, generated "
        f"{res.get('n_generated') or 0}" + (f" ({src})" if src else "")
    )


def energy_section(runs: Runs, figures: Figures, notes: list[str]) -> Section:
    sec = Section("Energy landscapes: clean, adversarial, generated")
    for proto in runs.protocols:
        panels, pngs = [], []  # runs with their energies on one axis; older runs, their own PNG
        for rec in runs.records:
            res, run_dir = _energy_result(rec, proto), runs.dir(rec)
            if res is None:
                continue
            title = _energy_title(rec, proto, res)
            values = _energy_values(run_dir, res) if run_dir else None
            rel = (res.get("artifacts") or {}).get("energy_histogram")
            if values is not None:
                panels.append(EnergyPanel(title, values, res))
            elif run_dir and rel and (png := read_png(run_dir / rel)) is not None:
                pngs.append((png, title + " (stored before energies were saved: its own axis)"))
        if panels:
            png = figures.save(energy_panels(panels, proto), f"energy-{proto}")
            sec.figure(png, f"protocol {proto}: {ENERGY_CAPTION}", f"energy panels {proto}")
        if pngs:
            sec.grid(pngs)
    if not sec.parts:
        sec.paragraph(
            "No energy evaluation stored; bench eval RUN --protocol standard --metrics energy adds "
            "one."
        )
    return sec


def _sample_grids(rec: dict[str, Any], run_dir: Path) -> list[tuple[Path, str]]:
    """The replay buffer's grid and the newest grids `bench sample` drew."""
    grid = (rec.get("artifacts") or {}).get("buffer_grid")
    found = [(run_dir / grid, "replay buffer at the last checkpoint")] if grid else []
    drawn = sorted(
        (run_dir / "samples").glob("sample-*.png"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    return found + [
        (p, f"bench sample: {p.stem.removeprefix('sample-')}")
        for p in drawn[: MAX_GRIDS_PER_RUN - 1]
    ]


def samples_section(runs: Runs, figures: Figures, notes: list[str]) -> Section:
    sec = Section("Samples")
    items = [
        (png, f"{_run_name(rec)}: {what}")
        for rec in runs.records
        if runs.dir(rec) is not None
        for path, what in _sample_grids(rec, runs.dir(rec))
        if (png := read_png(path)) is not None
    ]
    if items:
        sec.grid(items)
    else:
        sec.paragraph(
            "No sample grid among these runs (energy methods write one at each checkpoint; "
            "bench sample RUN draws more)."
        )
    return sec


def curves_section(runs: Runs, figures: Figures, notes: list[str]) -> Section:
    sec = Section("Training curves")
    logged = [r for r in runs.records if (r.get("training") or {}).get("history")]
    logged.sort(key=lambda r: r.get("created_at") or "", reverse=True)
    if len(logged) > MAX_CURVE_RUNS:
        sec.paragraph(
            f"the newest {MAX_CURVE_RUNS} of {len(logged)} runs (--filter narrows the choice)"
        )
        logged = logged[:MAX_CURVE_RUNS]
    if not logged:
        sec.paragraph("No training history stored.")
        return sec
    hist = {_run_name(r): r["training"]["history"] for r in logged}
    val = {_run_name(r): r["training"].get("validation") or [] for r in logged}
    sec.figure(
        figures.save(training_curves(hist, val), "curves"),
        "Every term the trainer logged, per logged step (a line per run), and the periodic "
        "validation accuracy.",
        "training curves",
    )
    return sec


SECTIONS = (tradeoff_section, leaderboard_section, energy_section, samples_section, curves_section)
