"""Leaderboards: run records -> one tidy DataFrame -> a pivoted table (Markdown/CSV/LaTeX/JSON).

The tidy frame has a row per (run, protocol, metric) with the value and the sample count that
produced it; the leaderboard has a row per run and a column per ``protocol/metric`` (accuracies
in percent), with the sample counts beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.records import list_runs, load_record

RUN_COLUMNS = ["run_id", "method", "dataset", "arch", "preset", "seed", "status", "epochs", "train_min"]
PRIMARY = {"clean": "accuracy", "pgd": "accuracy", "autoattack": "accuracy"}  # metric -> headline number


def tidy(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        for protocol, metrics in (r.get("evaluations") or {}).items():
            for metric, res in metrics.items():
                if not isinstance(res, dict):
                    continue
                for key, value in res.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("n_examples", "seconds"):
                        rows.append({"run_id": r["run_id"], "protocol": protocol, "metric": metric, "key": key,
                                     "value": float(value), "n_examples": res.get("n_examples")})
    return pd.DataFrame(rows, columns=["run_id", "protocol", "metric", "key", "value", "n_examples"])


def run_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        tr = r.get("training") or {}
        rows.append({
            "run_id": r["run_id"], "method": r.get("method"), "dataset": r.get("dataset"), "arch": r.get("arch"),
            "preset": r.get("preset"), "seed": r.get("seed"), "status": r.get("status"),
            "epochs": tr.get("epochs_done"),
            "train_min": round((r.get("timings") or {}).get("train_seconds", 0) / 60, 2),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def leaderboard(records: list[dict[str, Any]]) -> pd.DataFrame:
    runs = run_table(records)
    t = tidy(records)
    if t.empty:
        return runs
    head = t[t.apply(lambda row: PRIMARY.get(row["metric"], row["key"]) == row["key"], axis=1)].copy()
    head["column"] = head["protocol"] + "/" + head["metric"]
    head["value"] = head["value"].where(head["key"] != "accuracy", head["value"] * 100).round(2)
    values = head.pivot_table(index="run_id", columns="column", values="value", aggfunc="first")
    counts = head.pivot_table(index="run_id", columns="column", values="n_examples", aggfunc="first")
    counts.columns = [f"{c} n" for c in counts.columns]
    wide = values.join(counts)
    ordered = []
    for c in values.columns:
        ordered += [c, f"{c} n"]
    wide = wide[ordered].reset_index()
    return runs.merge(wide, on="run_id", how="left")


def apply_filters(df: pd.DataFrame, filters: tuple[str, ...] | list[str]) -> pd.DataFrame:
    for f in filters:
        op = "!=" if "!=" in f else "="
        key, _, value = f.partition(op)
        key = key.strip()
        if not key or key not in df.columns:
            raise BenchError(f"cannot filter on {key!r}; filter as COLUMN=VALUE with one of: {', '.join(df.columns)}")
        col = df[key].astype(str)
        df = df[col != value] if op == "!=" else df[col == value]
    return df


def sort_table(df: pd.DataFrame, column: str | None, ascending: bool) -> pd.DataFrame:
    if not column:
        return df
    if column not in df.columns:
        raise BenchError(f"cannot sort by {column!r}; choose one of: {', '.join(df.columns)}")
    return df.sort_values(column, ascending=ascending, na_position="last", kind="stable")


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        return df.to_markdown(index=False, floatfmt="g", missingval="")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "latex":
        return df.to_latex(index=False, na_rep="", float_format=lambda v: f"{v:g}", escape=True)
    if fmt == "json":
        return df.to_json(orient="records", indent=2)
    raise BenchError(f"unknown format {fmt!r}; choose md, csv, latex or json")


def load_records(out: str | Path) -> list[dict[str, Any]]:
    return [load_record(d) for d in list_runs(out)]


def compare(out: str | Path, fmt: str = "md", sort: str | None = None, ascending: bool = False,
            filters: tuple[str, ...] = ()) -> str:
    records = load_records(out)
    if not records:
        raise BenchError(f"no runs under {Path(out) / 'runs'}/; train one with: bench run --method ce --preset smoke")
    df = leaderboard(records)
    df = apply_filters(df, filters)
    df = sort_table(df, sort, ascending)
    return render(df, fmt)
