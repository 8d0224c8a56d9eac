"""Leaderboards: run records -> one tidy DataFrame -> a pivoted table (Markdown/CSV/LaTeX/JSON).

The tidy frame has a row per (run, protocol, metric, key) with the value and the sample count
that produced it. The leaderboard has a row per run and, grouped per protocol (``quick``,
``standard``, ``paper``, then any other), a column per headline number (``<protocol>/clean``,
``<protocol>/autoattack``, ``<protocol>/fid``, ``<protocol>/energy.gap_adv``, ...), each followed
by its sample count (``... n``). Which numbers are headlines, their scale (accuracies and ECE in
percent) and the order of the columns come from each metric's :class:`metrics.Presentation`, so a
plugin's metric gets its columns with no change here. A run's ``changes`` (its settings that
depart from its method's preset) are stored in its record when it starts.

Reference rows (published numbers; ``bench/leaderboard/reference/reported.csv``: the EB-JDAT paper's rows
from a secondary source and RobustBench leaderboard entries) are added with ``reference=True``.
They carry ``kind = reported``, a source and a note, sit in the column of the protocol whose
settings they were produced under, and always come after the measured rows (sorting and
filtering apply within each group); they are never merged into a measured row.
"""

from __future__ import annotations

from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.core.records import list_runs, live_status, load_record
from bench.leaderboard.compare_view import HELPERS, number_columns
from metrics import presentation

RUN_COLUMNS = [
    "run_id",
    "method",
    "dataset",
    "arch",
    "preset",
    "changes",
    "seed",
    "status",
    "epochs",
    "train_min",
    "eval_min",
]
REF_COLUMNS = ["source", "note"]
PROTOCOL_ORDER = ["quick", "standard", "paper"]
REFERENCE_NOTE = (
    "reported rows are published numbers, not measured here. 'paper' rows: the EB-JDAT paper as given by "
    "secondary notes (en.papernotes.org), not yet checked against the PDF, under the authors' protocol "
    "(eps 8/255 on [-1,1] = 4/255 px, N(0,0.03^2) test noise, reduced AutoAttack; FID/IS via torchmetrics "
    "with a uint8 wrap-around), comparable only with our 'paper' protocol and only roughly. 'standard' rows: "
    "RobustBench leaderboard (10k test images, standard AutoAttack)."
)


TIDY_COLUMNS = [
    "run_id",
    "protocol",
    "metric",
    "base",
    "key",
    "value",
    "n_examples",
    "reliable",
    "ci_lo",
    "ci_hi",
    "small_n",
]


def _interval(res: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    """The stored 95 % interval of an accuracy (worked out from n for results stored before intervals)."""
    if key != "accuracy":
        return None, None
    ci = res.get("accuracy_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return float(ci[0]), float(ci[1])
    n = res.get("n_examples")
    if isinstance(n, int) and n > 0:
        from metrics.intervals import accuracy_interval

        lo, hi = accuracy_interval(float(res["accuracy"]), n)
        return lo, hi
    return None, None


def tidy(records: list[dict[str, Any]]) -> pd.DataFrame:
    """A row per stored number, with its sample count, its result's reliability (None: unchecked)
    and, for accuracies, the 95 % interval."""
    rows = []
    for r in records:
        for protocol, metrics in (r.get("evaluations") or {}).items():
            for metric, res in metrics.items():
                if not isinstance(res, dict):
                    continue
                reliable = res.get("reliable") if isinstance(res.get("reliable"), bool) else None
                small_n = bool(
                    res.get("small_n")
                )  # e.g. a FID on < 10k samples: comparable only at equal n
                for key, value in res.items():
                    if (
                        isinstance(value, (int, float))
                        and not isinstance(value, bool)
                        and key not in ("n_examples", "seconds")
                    ):
                        lo, hi = _interval(res, key)
                        rows.append(
                            {
                                "run_id": r["run_id"],
                                "protocol": protocol,
                                "metric": metric,
                                "key": key,
                                "base": res.get("metric") or metric.split("[")[0],
                                "value": float(value),
                                "n_examples": res.get("n_examples"),
                                "reliable": reliable,
                                "ci_lo": lo,
                                "ci_hi": hi,
                                "small_n": small_n,
                            }
                        )
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


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


def protocol_rank(p: str) -> tuple[int, str]:
    """Sort key of protocols: quick, standard, paper, then the others by name."""
    return (PROTOCOL_ORDER.index(p), p) if p in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), p)


def headline(t: pd.DataFrame) -> pd.DataFrame:
    """The tidy rows that are headline numbers, with ``column``, shown ``value`` and an order.

    A metric that declares no headlines shows its accuracy, or else every number it stored (the
    keys it stored in any run)."""
    keep = []
    stored: dict[str, dict[str, float]] = {}  # metric -> the keys it stored, in any run
    values: dict[tuple, float] = {}  # (run, protocol, metric, key) -> value, for spreads
    for row in t.itertuples(index=False):
        stored.setdefault(row.metric, {})[row.key] = row.value
        values[(row.run_id, row.protocol, row.metric, row.key)] = row.value
    for row in t.itertuples(index=False):
        base = (
            getattr(row, "base", None) or row.metric
        )  # "pgd" for a result stored as "pgd[steps=50]"
        variant = row.metric[len(base) :] if row.metric.startswith(base) else ""
        shown = presentation(base)
        for i, h in enumerate(shown.headlines_for(base, stored[row.metric])):
            if h.key == row.key:
                spread = (
                    values.get((row.run_id, row.protocol, row.metric, h.spread))
                    if h.spread
                    else None
                )
                # a number its metric marks as biased at this n sits in a column of its own n
                column = f"{row.protocol}/{h.label}{variant}" + (
                    f"@{int(row.n_examples)}"
                    if getattr(row, "small_n", False) and pd.notna(row.n_examples)
                    else ""
                )
                ci = [
                    None if pd.isna(v) else h.shown(v)
                    for v in (getattr(row, "ci_lo", None), getattr(row, "ci_hi", None))
                ]
                # a checked metric's result without checks (stored before they existed) is "unchecked"
                reliable = getattr(row, "reliable", None)
                reliable = (
                    "no"
                    if reliable is False
                    else "yes"
                    if reliable is True
                    else ("unchecked" if shown.checked else None)
                )
                keep.append(
                    {
                        "run_id": row.run_id,
                        "column": column,
                        "value": h.shown(row.value),
                        "protocol": row.protocol,
                        "metric": row.metric,
                        "label": column.split("/", 1)[1],
                        "checked": shown.checked,
                        "brief": shown.brief,
                        "n_examples": row.n_examples,
                        "reliable": reliable,
                        "ci_lo": ci[0],
                        "ci_hi": ci[1],
                        "spread": None if spread is None else h.shown(spread),
                        "order": (protocol_rank(row.protocol), shown.order, row.metric, i, column),
                    }
                )
    return pd.DataFrame(
        keep,
        columns=[
            "run_id",
            "column",
            "value",
            "protocol",
            "metric",
            "label",
            "checked",
            "brief",
            "n_examples",
            "reliable",
            "ci_lo",
            "ci_hi",
            "spread",
            "order",
        ],
    )


def column_meta(head: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """column -> its protocol, metric, label (without the protocol), whether it is an attack
    (``checked``), whether it is in the brief view, and its presentation order."""
    meta = {}
    for row in head.drop_duplicates("column").itertuples(index=False):
        meta[row.column] = {
            "protocol": row.protocol,
            "metric": row.metric,
            "label": row.label,
            "checked": bool(row.checked),
            "brief": bool(row.brief),
            "order": row.order[1],
        }
    return meta


def _wide(head: pd.DataFrame, ci: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Runs x columns: each headline number followed by its ``n``, its ``reliable`` mark (robustness
    numbers) and, with ``ci``, its 95 % interval bounds (accuracies)."""
    order = head.drop_duplicates("column").sort_values("order", kind="stable")["column"].tolist()

    def pivot(values: str, suffix: str) -> pd.DataFrame:
        p = head.pivot_table(
            index="run_id", columns="column", values=values, aggfunc="first", dropna=False
        )
        p = p.reindex(columns=order)
        p.columns = [f"{c}{suffix}" for c in p.columns]
        return p

    parts = {
        "": pivot("value", ""),
        " ±": pivot("spread", " ±"),
        " n": pivot("n_examples", " n"),
        " reliable": pivot("reliable", " reliable"),
    }
    if ci:
        parts[" ci_lo"], parts[" ci_hi"] = pivot("ci_lo", " ci_lo"), pivot("ci_hi", " ci_hi")
    wide = pd.concat(parts.values(), axis=1)
    cols = []
    for c in order:
        for suffix in parts:
            name = f"{c}{suffix}"
            if suffix == "" or suffix == " n" or wide[name].notna().any():
                cols.append(name)
    return wide[cols].reset_index(), cols


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
        wide, cols = _wide(head, ci=ci)
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


FILTER_OPS = (">=", "<=", "!=", ">", "<", "=")  # two-character operators first


def apply_filters(df: pd.DataFrame, filters: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Keep the rows matching every filter: ``COL=VALUE``, ``COL!=VALUE``, or a number compared
    with ``>``, ``>=``, ``<``, ``<=`` (e.g. ``standard/autoattack>40``; empty cells never match)."""
    for f in filters:
        op = next((o for o in FILTER_OPS if o in f), None)
        if op is None:
            raise BenchError(
                f"--filter {f!r} names no value; write COLUMN=VALUE, COLUMN!=VALUE or COLUMN>NUMBER, "
                "e.g. method=ce"
            )
        key, _, value = f.partition(op)
        key, value = key.strip(), value.strip()
        if not key or key not in df.columns:
            raise BenchError(
                f"cannot filter on {key!r}; filter as COLUMN=VALUE with one of: {', '.join(df.columns)}"
            )
        if op in ("=", "!="):
            col = df[key].astype(str)
            df = df[col != value] if op == "!=" else df[col == value]
            continue
        try:
            bound = float(value)
        except ValueError:
            raise BenchError(f"--filter {f!r}: {op} compares numbers; {value!r} is not one")
        col = pd.to_numeric(df[key], errors="coerce")
        keep = {">": col > bound, ">=": col >= bound, "<": col < bound, "<=": col <= bound}[op]
        df = df[keep.fillna(False)]
    return df


def select_columns(df: pd.DataFrame, columns: str | None) -> pd.DataFrame:
    """``--columns a,b,c``: the run id, these columns and their n / reliability / interval columns."""
    if not columns:
        return df
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in df.columns]
    if not wanted or unknown:
        raise BenchError(
            f"--columns: unknown {', '.join(unknown) or 'nothing given'}; choose from: "
            f"{', '.join(c for c in df.columns if not c.endswith(HELPERS))}"
        )
    keep = [c for c in ("kind", "run_id") if c in df.columns and c not in wanted]
    for c in wanted:
        keep += [c] + [f"{c}{s}" for s in HELPERS if f"{c}{s}" in df.columns]
    return df[keep]


def sort_table(df: pd.DataFrame, column: str | None, ascending: bool) -> pd.DataFrame:
    if not column:
        return df
    if column not in df.columns:
        raise BenchError(f"cannot sort by {column!r}; choose one of: {', '.join(df.columns)}")
    if (
        "kind" in df.columns
    ):  # measured (and external) rows first, reported after; sorted within each group
        parts = [
            g.sort_values(column, ascending=ascending, na_position="last", kind="stable")
            for _, g in df.groupby(df["kind"] == "reported", sort=True)
        ]
        return pd.concat(parts) if parts else df
    return df.sort_values(column, ascending=ascending, na_position="last", kind="stable")


def pair_reported(df: pd.DataFrame) -> pd.DataFrame:
    """Move each reported RobustBench row (``NAME (RobustBench)``) to just after the external rows that
    measured the same zoo entry (method ``robustbench:NAME``); other reported rows stay at the end."""
    if "kind" not in df.columns or not (df["kind"] == "external").any():
        return df
    reported = {
        str(rid)[: -len(" (RobustBench)")]: i
        for i, rid in zip(df.index, df["run_id"])
        if df.at[i, "kind"] == "reported" and str(rid).endswith(" (RobustBench)")
    }
    order, placed = [], set()
    ext = [(i, str(m)) for i, m, k in zip(df.index, df["method"], df["kind"]) if k == "external"]
    last = {m: i for i, m in ext}  # each entry's last external row
    for i in df.index:
        if i in placed:
            continue
        order.append(i)
        method = str(df.at[i, "method"])
        if (
            df.at[i, "kind"] == "external"
            and last.get(method) == i
            and method.startswith("robustbench:")
        ):
            j = reported.get(method[len("robustbench:") :])
            if j is not None and j not in placed:
                order.append(j)
                placed.add(j)
        placed.add(i)
    return df.loc[[i for i in order if i in placed]]


def drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """Drop number columns empty in every row (after filtering), with their helper columns; with
    reference rows also empty run columns."""
    empty = {c for c in number_columns(df) if df[c].isna().all()}
    gone = empty | {f"{c}{s}" for c in empty for s in HELPERS}
    if "kind" in df.columns:
        gone |= {c for c in df.columns if c not in ("kind", "run_id") and df[c].isna().all()}
    return df[[c for c in df.columns if c not in gone]]


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

        df = group_seeds(df)
    elif group is not None:
        raise BenchError(f"unknown --group {group!r}; choose: seeds")
    df = drop_empty(pair_reported(sort_table(df, sort, ascending)))
    if columns:
        df, wide = select_columns(df, columns), True
    if "kind" in df.columns and (df["kind"] == "reported").any() and fmt == "md":
        notes.append(REFERENCE_NOTE)
    return render(df, fmt, meta, wide=wide, protocol=protocol, notes=tuple(notes))
