"""`bench report`: one self-contained HTML page of the trilemma, with its figures beside it.

The page holds the trade-off plane per protocol (``bench.leaderboard.report.tables`` / ``figures``), the
energy panels of every run, sample grids, training curves and the leaderboard (the numbers of
`bench compare`). Figures are written as PNG and SVG into ``figures/`` next to the page and
embedded in it, so the page opens from disk with no network.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core.errors import BenchError
from bench.leaderboard.report.figures import EnergyPanel, energy_panels, tradeoff, training_curves
from bench.leaderboard.report.page import Section, grid_html, read_png, render_page, table_html
from bench.leaderboard.report.tables import MEASURED_KINDS
from bench.leaderboard.report.tables import planes as trade_planes

MAX_CURVE_RUNS = 10  # training curves of at most this many runs (the newest), to stay legible
MAX_GRIDS_PER_RUN = 3


@dataclass
class Report:
    html: Path
    figures: list[Path] = field(default_factory=list)
    runs: int = 0
    notes: list[str] = field(default_factory=list)


def _figure_bytes(fig) -> tuple[bytes, bytes]:
    import matplotlib.pyplot as plt

    try:
        png, svg = io.BytesIO(), io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        fig.savefig(svg, format="svg")
    finally:
        plt.close(fig)
    return png.getvalue(), svg.getvalue()


class _Writer:
    """Writes each figure as PNG and SVG into ``folder`` (atomically) and remembers the paths."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths: list[Path] = []

    def save(self, fig, name: str) -> bytes:
        from bench.core.io import _atomic

        png, svg = _figure_bytes(fig)
        for data, suffix in ((png, ".png"), (svg, ".svg")):
            path = self.folder / f"{name}{suffix}"
            _atomic(path, lambda fh, d=data: fh.write(d))
            self.paths.append(path)
        return png


def _short(run_id: str) -> str:
    from bench.leaderboard.compare_view import short_id

    return short_id(run_id)


def _run_name(rec: dict[str, Any]) -> str:
    return f"{_short(rec['run_id'])} {rec.get('method')} (seed {rec.get('seed')})"


def _energy_result(rec: dict[str, Any], protocol: str) -> dict[str, Any] | None:
    results = (rec.get("evaluations") or {}).get(protocol) or {}
    if isinstance(results.get("energy"), dict):
        return results["energy"]
    return next(
        (v for k, v in sorted(results.items()) if k.startswith("energy[") and isinstance(v, dict)),
        None,
    )


def _energy_values(run_dir: Path, res: dict[str, Any]) -> dict[str, np.ndarray] | None:
    rel = (res.get("artifacts") or {}).get("energy_values")
    if not rel:
        return None
    try:
        with np.load(run_dir / rel) as z:
            return {
                k: np.asarray(z[k], dtype=np.float64)
                for k in ("clean", "adversarial", "generated")
                if k in z
            }
    except (OSError, ValueError, KeyError):
        return None


def _protocols_with_numbers(meta: dict[str, dict], df) -> list[str]:
    from bench.leaderboard.compare import protocol_rank

    present = {m["protocol"] for c, m in meta.items() if c in df.columns and df[c].notna().any()}
    return sorted(present, key=protocol_rank)


def build_report(
    out: str | Path = "results",
    html: str | Path | None = None,
    filters: tuple[str, ...] = (),
    protocol: str | None = None,
    reference: bool = True,
    announce: Callable[[str], None] | None = None,
) -> Report:
    """Write the report of the runs under ``out`` (those ``filters`` keep, as in `bench compare`)."""
    from bench.core.records import list_runs
    from bench.leaderboard.compare import apply_filters, leaderboard_and_meta, load_records
    from bench.leaderboard.compare_view import brief, pick_protocol
    from bench.leaderboard.grouping import group_seeds

    records = [r for r in load_records(out) if r.get("status") != "running"]
    if not records:
        raise BenchError(
            f"no finished runs under {Path(out) / 'runs'}/ to report on; train one with: "
            "bench run --method ce --preset smoke (or make demo)"
        )
    df, meta = leaderboard_and_meta(records, reference=reference, ci=True, reliable_only=False)
    df = apply_filters(df, filters)
    measured = df[df["kind"].isin(MEASURED_KINDS)] if "kind" in df.columns else df
    if measured.empty:
        raise BenchError(
            f"no run matches {' '.join('--filter ' + f for f in filters)}; `bench compare --all` "
            "lists the runs and their columns"
        )
    keep = set(measured["run_id"])
    records = [r for r in records if r["run_id"] in keep]
    run_dirs = {d.name: d for d in list_runs(out)}
    if protocol is not None:
        pick_protocol(
            measured, meta, protocol
        )  # one line naming the protocols the runs have, when it has none

    page = Path(html) if html is not None else Path(out) / "report" / "index.html"
    if page.suffix.lower() not in (".html", ".htm"):
        raise BenchError(f"--html {str(page)!r} must name an .html file")
    writer = _Writer(page.parent / "figures")
    try:
        writer.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(
            f"cannot write the report to {page.parent} ({exc.strerror or exc}); pass a writable "
            "--html path"
        ) from None
    report = Report(html=page, runs=len(records))
    sections: list[Section] = []
    protocols = [protocol] if protocol else _protocols_with_numbers(meta, measured)

    # 1. the trade-off plane, one panel per protocol
    grouped = group_seeds(df)
    planes = [p for p in trade_planes(grouped, meta) if p.protocol in protocols]
    sec = Section("Trade-off: accuracy, robustness, generation")
    if planes:
        png = writer.save(tradeoff(planes), "tradeoff")
        sec.figure(
            png,
            "Each panel is one protocol on one dataset (never mixed; reported rows only beside runs of "
            "their dataset). x: clean accuracy; y: robust accuracy under the "
            "strongest attack stored for the run; colour: FID or KID (lower is better; grey when none is "
            "stored); dashed: the Pareto front of what was measured here on the two accuracies; ringed: the "
            "runs no other run beats on all three axes at once (clean, robust, FID/KID), the trilemma's "
            "front; squares: external models "
            "(e.g. RobustBench's) evaluated here under the same protocol; hollow diamonds: reported "
            "numbers (not measured here); ×k and error bars: k seeds with the 95% t-interval; ! a number that "
            "failed a guardrail check.",
            "trade-off plane",
        )
        variants = sorted(
            {
                (pt.label, pt.changes)
                for p in planes
                for pt in p.points
                if pt.label.endswith(")") and pt.kind == "measured"
            }
        )
        for label, changes in variants:
            sec.paragraph(f"{label}: {changes or 'the preset as it is'}", "caption")
        for p in planes:
            if p.generation_column is None:
                sec.paragraph(
                    f"protocol {p.protocol}: no run has FID or KID stored, so no point is coloured "
                    "(bench eval RUN --metrics fid,kid adds them; see bench fid-weights)"
                )
    else:
        sec.paragraph(
            "No protocol has both a clean accuracy and an attack for these runs; "
            "bench eval RUN --protocol standard adds them."
        )
        report.notes.append(
            "no trade-off plane: no run has both clean and robust accuracy in one protocol"
        )
    sections.append(sec)

    # 2. the leaderboard, one brief table per protocol (the numbers of bench compare)
    sec = Section("Leaderboard")
    for proto in protocols:
        try:
            table, caption = brief(df, meta, proto)
        except BenchError:  # the protocol has numbers only in rows the filter dropped
            continue
        numbers = [
            c
            for c in table.columns
            if c
            not in (
                "kind",
                "run",
                "method",
                "changes",
                "seed",
                "seeds",
                "dataset",
                "arch",
                "preset",
                "status",
            )
        ]
        table = (table[table[numbers].notna().any(axis=1)] if numbers else table.iloc[0:0]).copy()
        if "seed" in table.columns:
            table["seed"] = pd.Series(
                ["" if v is None or v != v else str(int(v)) for v in table["seed"]],
                index=table.index,
                dtype=object,
            )  # 0, not 0.0 beside reported rows
        kinds = list(table["kind"]) if "kind" in table.columns else [""] * len(table)
        rows = [
            [None if (isinstance(v, float) and np.isnan(v)) else v for v in row]
            for row in table.itertuples(index=False)
        ]
        sec.raw(f"<h3>protocol {proto}</h3>")
        sec.raw(
            '<div class="scroll">'
            + table_html(
                list(table.columns), rows, ["reported" if k == "reported" else "" for k in kinds]
            )
            + "</div>"
        )
        for line in caption[1:]:
            sec.paragraph(line, "caption")
    from bench.leaderboard.compare_view import MARK_NOTE

    sec.paragraph(
        "Accuracies in %. "
        + MARK_NOTE
        + ". Reported rows (italic) are published numbers, not measured "
        "here. The same numbers as bench compare --protocol P."
    )
    sections.append(sec)

    # 3. energy panels, per protocol, every run on one axis
    sec = Section("Energy landscapes: clean, adversarial, generated")
    any_energy = False
    for proto in protocols:
        panels, pngs = [], []
        for rec in records:
            res = _energy_result(rec, proto)
            if res is None:
                continue
            run_dir = run_dirs.get(rec["run_id"])
            values = _energy_values(run_dir, res) if run_dir else None
            n_gen = res.get("n_generated") or 0
            src = (
                (res.get("samples") or {}).get("source")
                if isinstance(res.get("samples"), dict)
                else None
            )
            title = (
                f"{_run_name(rec)} · protocol {proto} · n clean/adv {res.get('n_examples')}, generated {n_gen}"
                + (f" ({src})" if src else "")
            )
            if values is not None:
                panels.append(EnergyPanel(title, values, res))
            else:
                rel = (res.get("artifacts") or {}).get("energy_histogram")
                png = read_png(run_dir / rel) if run_dir and rel else None
                if png is not None:
                    pngs.append((png, title + " (stored before energies were saved: its own axis)"))
        if panels:
            any_energy = True
            png = writer.save(energy_panels(panels, proto), f"energy-{proto}")
            sec.figure(
                png,
                f"protocol {proto}: E(x) = -logsumexp f(x) of clean test images, their PGD adversarial "
                "versions and generated samples, every run on one shared axis; gaps are mean E(adv) - "
                "mean E(clean) and mean E(gen) - mean E(clean), W1 the Wasserstein-1 distances.",
                f"energy panels {proto}",
            )
        if pngs:
            any_energy = True
            sec.raw(grid_html(pngs))
    if not any_energy:
        sec.paragraph(
            "No energy evaluation stored; bench eval RUN --protocol standard --metrics energy adds one."
        )
    sections.append(sec)

    # 4. sample grids of the runs that sample
    sec = Section("Samples")
    items = []
    for rec in records:
        run_dir = run_dirs.get(rec["run_id"])
        if run_dir is None:
            continue
        paths = []
        grid = (rec.get("artifacts") or {}).get("buffer_grid")
        if grid:
            paths.append((run_dir / grid, "replay buffer at the last checkpoint"))
        drawn = sorted(
            (run_dir / "samples").glob("sample-*.png"),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        paths += [
            (p, f"bench sample: {p.stem.removeprefix('sample-')}")
            for p in drawn[: MAX_GRIDS_PER_RUN - 1]
        ]
        for path, what in paths:
            png = read_png(path)
            if png is not None:
                items.append((png, f"{_run_name(rec)}: {what}"))
    if items:
        sec.raw(grid_html(items))
    else:
        sec.paragraph(
            "No sample grid among these runs (energy methods write one at each checkpoint; "
            "bench sample RUN draws more)."
        )
    sections.append(sec)

    # 5. training curves
    sec = Section("Training curves")
    with_history = [r for r in records if (r.get("training") or {}).get("history")]
    with_history.sort(key=lambda r: r.get("created_at") or "", reverse=True)
    if len(with_history) > MAX_CURVE_RUNS:
        sec.paragraph(
            f"the newest {MAX_CURVE_RUNS} of {len(with_history)} runs (--filter narrows the choice)"
        )
        with_history = with_history[:MAX_CURVE_RUNS]
    if with_history:
        hist = {_run_name(r): r["training"]["history"] for r in with_history}
        val = {_run_name(r): r["training"].get("validation") or [] for r in with_history}
        png = writer.save(training_curves(hist, val), "curves")
        sec.figure(
            png,
            "Every term the trainer logged, per logged step (a line per run), and the periodic "
            "validation accuracy.",
            "training curves",
        )
    else:
        sec.paragraph("No training history stored.")
    sections.append(sec)

    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("trilemma-bench")
    except PackageNotFoundError:  # pragma: no cover - a source tree without installation
        ver = "?"
    meta_lines = [
        f"{len(records)} run(s) under {Path(out).resolve()}"
        + (f", filtered by {' '.join(filters)}" if filters else "")
        + f"; protocols: {', '.join(protocols) or 'none'}",
        f"written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by trilemma-bench {ver}; figures (PNG, SVG) "
        f"beside this page in {writer.folder.name}/",
    ]
    text = render_page("trilemma-bench report", meta_lines, sections)
    try:
        from bench.core.io import write_text

        write_text(page, text)
    except OSError as exc:
        raise BenchError(
            f"cannot write the report to {page} ({exc.strerror or exc}); pass a writable --html "
            "path"
        ) from None
    report.figures = writer.paths
    if announce:
        announce(f"report: {page} ({len(records)} runs, {len(writer.paths) // 2} figures)")
    return report
