"""`bench compare --group seeds`: runs that differ only in their seed as one row, each headline
number the mean over the runs with the half-width of its 95 % t-interval in ``<column> ±``;
README "Evaluation" and docs/evaluation.md describe it. Reported rows are left as they are."""

from __future__ import annotations

import math

import pandas as pd

from bench.leaderboard.compare_view import MARKS, number_columns
from metrics.intervals import t_interval

# changes: settings off the preset; code: the plugins' source digests (edited code is another setting)
GROUP_BY = ["method", "dataset", "arch", "preset", "changes", "code"]


def _one(values: pd.Series):
    v = values.dropna().unique()
    return v[0] if len(v) == 1 else math.nan


def _group_row(g: pd.DataFrame, columns: list[str]) -> dict:
    seeds = sorted(int(s) for s in g["seed"].dropna())
    repeated = len(set(seeds)) < len(seeds)  # runs of one seed are not independent: no interval
    row = {c: g[c].iloc[0] for c in GROUP_BY[:-1]}
    row.update(
        kind="measured",
        run_id=g["run_id"].iloc[0] if len(g) == 1 else f"{len(g)} runs",
        seeds=len(set(seeds)),
        seed=",".join(map(str, seeds)) + (" (repeated: no interval)" if repeated else ""),
        status=",".join(sorted(set(g["status"].dropna()))),
        epochs=g["epochs"].mean(),
        train_min=round(g["train_min"].mean(), 2),
        eval_min=round(g["eval_min"].mean(), 2),
    )
    for c in columns:
        vals = g[c].dropna()
        if vals.empty:
            continue
        mean, half = t_interval(list(vals))
        row[c] = round(mean, 4)
        row[f"{c} ±"] = round(half, 4) if len(vals) > 1 and not repeated else math.nan
        if f"{c} n" in g.columns:
            row[f"{c} n"] = _one(g[f"{c} n"])
        if f"{c} reliable" in g.columns:  # the worst mark of any run: no, unchecked, then yes
            present = set(g[f"{c} reliable"].dropna())
            row[f"{c} reliable"] = next((m for m in (*MARKS, "yes") if m in present), None)
    return row


def plugin_code(record: dict) -> str:
    """The digests of the plugins' source a run ran (``source_sha256``); empty for built-in parts
    and for records from before the digests."""
    plugins = (record.get("environment") or {}).get("plugins") or []
    return " ".join(sorted(str(p["source_sha256"]) for p in plugins if p.get("source_sha256")))


def group_seeds(df: pd.DataFrame, records: list[dict] = ()) -> pd.DataFrame:
    """The leaderboard with each group of measured runs as one row, reported rows after them;
    ``records`` (the rows' runs) tell runs of edited plugin code apart."""
    measured = df["kind"] == "measured" if "kind" in df.columns else pd.Series(True, df.index)
    columns = number_columns(df)
    code = {r["run_id"]: plugin_code(r) for r in records}
    keyed = df[measured].assign(code=[code.get(r, "") for r in df.loc[measured, "run_id"]])
    groups = keyed.groupby(GROUP_BY, dropna=False, sort=False)
    order = []
    for c in df.columns:
        if not c.endswith((" ci_lo", " ci_hi")):  # one run's interval says nothing of a mean
            order += [c, *([f"{c} ±"] if c in columns else []), *(["seeds"] if c == "seed" else [])]
    order = list(dict.fromkeys(order))  # a KID's own ± (its std) becomes the spread over seeds
    grouped = pd.DataFrame([_group_row(g, columns) for _, g in groups]).reindex(columns=order)
    others = df[~measured].reindex(columns=order)
    return pd.concat([grouped, others], ignore_index=True) if len(others) else grouped
