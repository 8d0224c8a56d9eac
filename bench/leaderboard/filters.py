"""The leaderboard's rows and columns as `bench compare` picks them: filters, column choice, order,
reported rows beside the runs that measured them, empty columns dropped (README.md, Evaluation)."""

from __future__ import annotations

import pandas as pd

from bench.core.errors import BenchError
from bench.leaderboard.compare_view import HELPERS, number_columns

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
        if not value:  # `method=` would match no row and print an empty table
            raise BenchError(
                f"--filter {f!r} gives no value after {op}; write e.g. {key}{op}VALUE "
                "(`bench compare` lists the values)"
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
    # measured (and external) rows first, reported after; sorted within each group
    if "kind" in df.columns:
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
