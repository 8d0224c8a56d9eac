"""`bench compare --group seeds`: the runs that differ only in their seed, as one row.

Runs are grouped by method, dataset, architecture, preset and ``changes``, the settings in which
they depart from the preset. Each headline number becomes the mean over the group's runs, with
the half-width of its 95 % Student-t interval in ``<column> ±``, as the adversarial-training
literature reports seeds. ``seeds`` counts the runs, and ``seed`` lists them. A robustness
number is marked unreliable (or unchecked) if any run's number is. Reported reference rows are
left as they are.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.leaderboard.compare_view import number_columns
from metrics.intervals import t_interval

GROUP_BY = ["method", "dataset", "arch", "preset", "changes"]


def _reliability(values: pd.Series) -> str | None:
    present = set(values.dropna())
    for mark in ("no", "unchecked", "yes"):
        if mark in present:
            return mark
    return None


def _one(values: pd.Series):
    v = values.dropna().unique()
    return v[0] if len(v) == 1 else math.nan


def group_seeds(df: pd.DataFrame) -> pd.DataFrame:
    measured = df[df["kind"] == "measured"] if "kind" in df.columns else df
    others = df[df["kind"] != "measured"] if "kind" in df.columns else df.iloc[0:0]
    columns = number_columns(df)
    rows = []
    for _, g in measured.groupby(GROUP_BY, dropna=False, sort=False):
        seeds = sorted(int(s) for s in g["seed"].dropna())
        row = {c: g[c].iloc[0] for c in GROUP_BY}
        if "kind" in df.columns:
            row["kind"] = "measured"
        row.update(
            run_id=g["run_id"].iloc[0] if len(g) == 1 else f"{len(g)} runs",
            seeds=len(g),
            seed=",".join(map(str, seeds)),
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
            row[f"{c} ±"] = round(half, 4) if len(vals) > 1 else math.nan
            if f"{c} n" in g.columns:
                row[f"{c} n"] = _one(g[f"{c} n"])
            if f"{c} reliable" in g.columns:
                row[f"{c} reliable"] = _reliability(g[f"{c} reliable"])
        rows.append(row)
    grouped = pd.DataFrame(rows)
    order = []
    for c in df.columns:
        if c.endswith((" ci_lo", " ci_hi")):
            continue  # an interval of one run does not describe a mean over seeds
        order.append(c)
        if c in columns:
            order.append(f"{c} ±")
        if c == "seed":
            order.append("seeds")
    grouped = grouped.reindex(columns=order)
    return (
        pd.concat([grouped, others.reindex(columns=order)], ignore_index=True)
        if len(others)
        else grouped
    )
