"""The numbers of the leaderboard (bench/leaderboard/compare.py): run records -> a tidy frame (a row
per stored number, with its sample count) -> the headline numbers each metric's
:class:`metrics.Presentation` names -> a column per headline (README.md, Evaluation)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.run.checkpoint_results import checkpoint_note
from metrics import presentation

PROTOCOL_ORDER = ["quick", "standard", "paper"]


TIDY_COLUMNS = (
    "run_id protocol metric base key value n_examples reliable ci_lo ci_hi small_n stale".split()
)
HEAD_COLUMNS = (
    "run_id column value protocol metric label checked brief n_examples reliable ci_lo ci_hi spread order"
).split()


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
                # e.g. a FID on < 10k samples: comparable only at equal n
                small_n = bool(res.get("small_n"))
                stale = checkpoint_note(r, res) is not None  # not the run's evaluated weights
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
                                "stale": stale,
                            }
                        )
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


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
        # "pgd" for a result stored as "pgd[steps=50]"
        base = getattr(row, "base", None) or row.metric
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
                    else "stale"
                    if getattr(row, "stale", False)
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
    return pd.DataFrame(keep, columns=HEAD_COLUMNS)


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


def wide_numbers(head: pd.DataFrame, ci: bool = False) -> tuple[pd.DataFrame, list[str]]:
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
