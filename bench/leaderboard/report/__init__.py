"""`bench report`: one self-contained HTML page of the trilemma, its figures beside it as PNG and
SVG; docs/report.md describes the page. ``build_report`` selects the runs, lets each section of
``sections.SECTIONS`` draw itself and writes the page (``page.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.io import write_text
from bench.core.run_dirs import list_runs
from bench.leaderboard.compare import (
    apply_filters,
    leaderboard_and_meta,
    load_records,
    protocol_rank,
)
from bench.leaderboard.compare_view import pick_protocol, protocol_counts
from bench.leaderboard.report.page import Figures, render_page
from bench.leaderboard.report.sections import SECTIONS, Runs
from bench.leaderboard.report.tables import MEASURED_KINDS


@dataclass
class Report:
    html: Path  # the page
    figures: list[Path] = field(default_factory=list)  # the PNG and SVG files beside it
    runs: int = 0
    notes: list[str] = field(default_factory=list)  # what the page could not show, for the CLI


def _unwritable(where: Path, exc: OSError) -> BenchError:
    return BenchError(
        f"cannot write the report to {where} ({exc.strerror or exc}); pass a writable --html path"
    )


def _select_runs(
    out: Path, filters: tuple[str, ...], protocol: str | None, reference: bool
) -> Runs:
    """The finished runs ``filters`` keep, their leaderboard and the protocols to show."""
    records = [r for r in load_records(out) if r.get("status") != "running"]
    if not records:
        raise BenchError(
            f"no finished runs under {out / 'runs'}/ to report on; train one with: "
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
    if protocol is not None:  # one line naming the protocols the runs have, when it has none
        pick_protocol(measured, meta, protocol)
    protocols = (
        [protocol] if protocol else sorted(protocol_counts(measured, meta), key=protocol_rank)
    )
    keep = set(measured["run_id"])
    return Runs(
        records=[r for r in records if r["run_id"] in keep],
        df=df,
        meta=meta,
        protocols=protocols,
        dirs={d.name: d for d in list_runs(out)},
    )


def _page_path(out: Path, html: str | Path | None) -> Path:
    page = Path(html) if html is not None else out / "report" / "index.html"
    if page.suffix.lower() not in (".html", ".htm"):
        raise BenchError(f"--html {str(page)!r} must name an .html file")
    return page


def _meta_lines(out: Path, runs: Runs, filters: tuple[str, ...], figures: Figures) -> list[str]:
    try:
        ver = version("trilemma-bench")
    except PackageNotFoundError:  # pragma: no cover - a source tree without installation
        ver = "?"
    return [
        f"{len(runs.records)} run(s) under {out.resolve()}"
        + (f", filtered by {' '.join(filters)}" if filters else "")
        + f"; protocols: {', '.join(runs.protocols) or 'none'}",
        f"written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by trilemma-bench {ver}; figures (PNG, "
        f"SVG) beside this page in {figures.folder.name}/",
    ]


def build_report(
    out: str | Path = "results",
    html: str | Path | None = None,
    filters: tuple[str, ...] = (),
    protocol: str | None = None,
    reference: bool = True,
    announce: Callable[[str], None] | None = None,
) -> Report:
    """Write the report of the runs under ``out`` (those ``filters`` keep, as in `bench compare`)."""
    out = Path(out)
    runs = _select_runs(out, filters, protocol, reference)
    page = _page_path(out, html)
    try:
        figures = Figures(page.parent / "figures")
    except OSError as exc:
        raise _unwritable(page, exc) from None
    report = Report(html=page, runs=len(runs.records))
    sections = [draw(runs, figures, report.notes) for draw in SECTIONS]
    text = render_page("trilemma-bench report", _meta_lines(out, runs, filters, figures), sections)
    try:
        write_text(page, text)
    except OSError as exc:
        raise _unwritable(page, exc) from None
    report.figures = figures.paths
    if announce:
        announce(f"report: {page} ({len(runs.records)} runs, {len(figures.paths) // 2} figures)")
    return report
