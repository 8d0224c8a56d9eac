"""Leaderboards: a row per run (its ``changes`` as its record stores them) beside a column per
headline number of each protocol (bench/leaderboard/headlines.py), then reference rows of published
numbers (``reference/reported.csv``), always after the measured rows and never merged into one;
README.md (Evaluation) shows the table and its options."""

from __future__ import annotations

from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.core.record_reading import load_record
from bench.core.run_dirs import list_runs, live_status
from bench.leaderboard.filters import (
    apply_filters,
    drop_empty,
    pair_reported,
    select_columns,
    sort_table,
)
from bench.leaderboard.headlines import column_meta, headline, protocol_rank, tidy, wide_numbers

# what the report and the tests take from here besides the leaderboard itself
__all__ = ["apply_filters", "changes_text", "leaderboard", "leaderboard_and_meta", "load_records"]
__all__ += ["protocol_rank"]

RUN_COLUMNS = (
    "run_id method dataset arch preset changes seed status epochs train_min eval_min".split()
)
REF_COLUMNS = ["source", "note"]
REFERENCE_NOTE = (
    "reported rows are published numbers, not measured here. 'paper' rows: the EB-JDAT paper as given by "
    "secondary notes (en.papernotes.org), not yet checked against the PDF, under the authors' protocol "
    "(eps 8/255 on [-1,1] = 4/255 px, N(0,0.03^2) test noise, reduced AutoAttack; FID/IS via torchmetrics "
    "with a uint8 wrap-around), comparable only with our 'paper' protocol and only roughly. 'standard' rows: "
    "RobustBench leaderboard (10k test images, standard AutoAttack)."
)


def reference_frame() -> pd.DataFrame:
    """The shipped reference rows (long form: one published number per line)."""
    try:
        with (
            resources.files("bench").joinpath("leaderboard/reference/reported.csv").open("r") as fh
        ):
            df = pd.read_csv(fh)
    except (
        FileNotFoundError,
        ModuleNotFoundError,
    ) as exc:  # pragma: no cover - broken installation
        raise BenchError(
            f"reference table missing from the installation ({exc}); reinstall trilemma-bench"
        )
    return df.rename(columns={"row": "run_id"})


def changes_text(record: dict[str, Any]) -> str:
    """The ``changes`` column: where the run departs from what every method gets under its preset,
    as ``key=value`` items: its method's own variant of the preset (``preset_variant``, e.g.
    pgd-at's PGD-3 on ``demo``) and its --set / --config choices (``changes``; they win on the same
    key), as its record stores them; for records from before they were stored, worked out again
    from today's method and preset ("?" when they no longer resolve)."""
    import json

    changes, variant = record.get("changes"), record.get("preset_variant")
    try:
        from bench.run.resolve import changes_of, variant_of

        if changes is None:  # records from before schema 2 only
            changes = changes_of(record.get("config") or {})
        if variant is None:  # records from before the field existed
            variant = variant_of(str(record.get("method")), str(record.get("preset")))
    except Exception:  # an unknown method/preset, or a record from another version
        return "?"
    merged = {**variant, **changes}
    return " ".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(merged.items())
    )


def run_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        tr = r.get("training") or {}
        rows.append(
            {
                "run_id": r["run_id"],
                "method": r.get("method"),
                "dataset": r.get("dataset"),
                "arch": r.get("arch"),
                "preset": r.get("preset"),
                "changes": changes_text(r),
                "seed": r.get("seed"),
                "status": r.get("status"),
                "epochs": tr.get("epochs_done"),
                "train_min": round((r.get("timings") or {}).get("train_seconds", 0) / 60, 2),
                "eval_min": round(
                    (r.get("timings") or {}).get("eval_seconds", 0) / 60, 2
                ),  # every evaluation, summed
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def leaderboard(
    records: list[dict[str, Any]],
    reference: bool = False,
    ci: bool = False,
    reliable_only: bool = False,
) -> pd.DataFrame:
    """The table: a row per run (and reference row), headline columns with n, reliability and
    (``ci``) intervals. ``reliable_only`` blanks every number that failed a guardrail check or
    was never checked."""
    return leaderboard_and_meta(records, reference, ci, reliable_only)[0]


def leaderboard_and_meta(
    records, reference: bool = False, ci: bool = False, reliable_only: bool = False
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The table of :func:`leaderboard` and its columns' metadata (:func:`column_meta`)."""
    runs = run_table(records)
    head = headline(tidy(records))
    if reliable_only:
        head = head[head["reliable"].isna() | (head["reliable"] == "yes")]
    ref = reference_frame() if reference else None
    if ref is not None:
        ref_head = headline(ref[["run_id", "protocol", "metric", "key", "value", "n_examples"]])
        ref_head["reliable"] = "reported"  # published numbers: their checks are the source's
        head = pd.concat([head, ref_head], ignore_index=True) if not head.empty else ref_head
    meta = column_meta(head) if not head.empty else {}
    if head.empty:
        df = runs
        cols: list[str] = []
    else:
        wide, cols = wide_numbers(head, ci=ci)
        df = runs.merge(wide, on="run_id", how="left")
    external = {
        r["run_id"] for r in records if r.get("kind") == "external"
    }  # zoo models evaluated here
    if ref is None:
        if external:
            df.insert(
                0, "kind", ["external" if rid in external else "measured" for rid in df["run_id"]]
            )
        return df, meta
    df.insert(0, "kind", ["external" if rid in external else "measured" for rid in df["run_id"]])
    rows = ref.drop_duplicates("run_id")[["run_id", "method", "dataset", "arch", "source", "note"]]
    rep = rows.assign(kind="reported")
    if not head.empty:
        rep = rep.merge(wide, on="run_id", how="left")
    df = pd.concat([df, rep], ignore_index=True)
    return df[["kind", *RUN_COLUMNS, *cols, *REF_COLUMNS]], meta


def load_records(out: str | Path) -> list[dict[str, Any]]:
    """Every readable record under ``out``; an unreadable one is skipped with a warning naming its file."""
    import sys

    records = []
    for d in list_runs(out):
        try:
            rec = load_record(d)
        except BenchError as exc:
            print(f"warning: skipped {d / 'record.json'}: {exc}", file=sys.stderr)
            continue
        rec["status"] = live_status(d, rec)  # a run whose process died shows as interrupted
        records.append(rec)
    return records


def compare(
    out: str | Path,
    fmt: str = "md",
    sort: str | None = None,
    ascending: bool = False,
    filters: tuple[str, ...] = (),
    reference: bool = False,
    ci: bool = False,
    reliable_only: bool = False,
    group: str | None = None,
    wide: bool = False,
    protocol: str | None = None,
    columns: str | None = None,
    all_runs: bool = False,
    runs: Collection[str] | None = None,
) -> str:
    """The leaderboard as text: ``md``/``latex`` in the brief view unless ``wide`` or ``columns``
    (bench.leaderboard.compare_view), ``csv``/``json`` with every column. Runs still training are left out
    unless ``all_runs``; ``group="seeds"`` folds runs that differ only in seed (bench.leaderboard.grouping);
    ``runs`` (run ids, e.g. a sweep's) keeps only those runs."""
    from bench.leaderboard.compare_view import render

    records = load_records(out)
    if runs is not None:
        wanted = set(runs)
        records = [r for r in records if r.get("run_id") in wanted]
        if not records and not reference:
            raise BenchError(
                f"none of the sweep's runs is under {Path(out) / 'runs'}/ yet; `bench sweep-status DIR` "
                "shows its cells"
            )
    if not records and not reference:
        raise BenchError(
            f"no runs under {Path(out) / 'runs'}/; train one with: bench run --method ce --preset smoke"
        )
    notes = []
    if not all_runs:
        running = [r for r in records if r.get("status") == "running"]
        records = [r for r in records if r.get("status") != "running"]
        if running:
            notes.append(f"{len(running)} run(s) still training are not shown (--all shows them)")
    df, meta = leaderboard_and_meta(records, reference, ci, reliable_only)
    df = apply_filters(df, filters)
    if group == "seeds":
        from bench.leaderboard.grouping import group_seeds

        df = group_seeds(df, records)
    elif group is not None:
        raise BenchError(f"unknown --group {group!r}; choose: seeds")
    df = drop_empty(pair_reported(sort_table(df, sort, ascending)))
    if columns:
        df, wide = select_columns(df, columns), True
    if "kind" in df.columns and (df["kind"] == "reported").any() and fmt == "md":
        notes.append(REFERENCE_NOTE)
    return render(df, fmt, meta, wide=wide, protocol=protocol, notes=tuple(notes))
