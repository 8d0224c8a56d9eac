"""Leaderboards: run records -> one tidy DataFrame -> a pivoted table (Markdown/CSV/LaTeX/JSON).

The tidy frame has a row per (run, protocol, metric, key) with the value and the sample count
that produced it. The leaderboard has a row per run and, grouped per protocol (``quick``,
``standard``, ``paper``, then any other), a column per headline number (``<protocol>/clean``,
``<protocol>/autoattack``, ``<protocol>/fid``, ``<protocol>/energy.gap_adv``, ...; accuracies and
ECE in percent), each followed by its sample count (``... n``).

Reference rows (published numbers; ``bench/reference/reported.csv``: the EB-JDAT paper's rows
from a secondary source and RobustBench leaderboard entries) are added with ``reference=True``.
They carry ``kind = reported``, a source and a note, sit in the column of the protocol whose
settings they were produced under, and always come after the measured rows (sorting and
filtering apply within each group); they are never merged into a measured row.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.records import list_runs, load_record

RUN_COLUMNS = ["run_id", "method", "dataset", "arch", "preset", "changes", "seed", "status", "epochs", "train_min"]
# settings chosen by their own flags or columns, never listed under "changes"
_NOT_CHANGES = {"method", "preset", "seed", "device", "data.dataset", "data.data_dir", "model.arch"}
REF_COLUMNS = ["source", "note"]
# metric -> [(key, column label, scale)]: the headline numbers shown in the leaderboard
HEADLINES: dict[str, list[tuple[str, str, float]]] = {
    "clean": [("accuracy", "clean", 100.0)],
    "pgd": [("accuracy", "pgd", 100.0)],
    "autoattack": [("accuracy", "autoattack", 100.0)],
    "fid": [("fid", "fid", 1.0)],
    "kid": [("kid_mean", "kid", 1.0)],
    "is": [("is_mean", "is", 1.0)],
    "energy": [("gap_adv", "energy.gap_adv", 1.0), ("gap_gen", "energy.gap_gen", 1.0)],
    "calibration": [("ece", "ece", 100.0)],
}
PRIMARY = {m: h[0][0] for m, h in HEADLINES.items()}  # metric -> its first headline key (kept for callers)
PROTOCOL_ORDER = ["quick", "standard", "paper"]
REFERENCE_NOTE = ("reported rows are published numbers, not measured here. 'paper' rows: the EB-JDAT paper as given by "
                  "secondary notes (en.papernotes.org), not yet checked against the PDF, under the authors' protocol "
                  "(eps 8/255 on [-1,1] = 4/255 px, N(0,0.03^2) test noise, reduced AutoAttack; FID/IS via torchmetrics "
                  "with a uint8 wrap-around), comparable only with our 'paper' protocol and only roughly. 'standard' rows: "
                  "RobustBench leaderboard (10k test images, standard AutoAttack).")


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


def reference_frame() -> pd.DataFrame:
    """The shipped reference rows (long form: one published number per line)."""
    try:
        with resources.files("bench").joinpath("reference/reported.csv").open("r") as fh:
            df = pd.read_csv(fh)
    except (FileNotFoundError, ModuleNotFoundError) as exc:  # pragma: no cover - broken installation
        raise BenchError(f"reference table missing from the installation ({exc}); reinstall trilemma-bench")
    return df.rename(columns={"row": "run_id"})


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{'method' if k == 'method_cfg' and not prefix else k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def preset_changes(record: dict[str, Any]) -> str:
    """The run's settings that differ from what its method and preset give today (its --set /
    --config choices, or preset edits made since it ran), as ``key=value`` items; "?" when
    the method or preset no longer resolves."""
    import json

    from bench.config import resolve_config

    cfg = record.get("config") or {}
    try:
        ref = resolve_config(record["method"], preset=record["preset"], dataset=cfg["data"]["dataset"],
                             arch=cfg["model"]["arch"]).to_dict()
    except Exception:  # an unknown method/preset, or a record from another version
        return "?"
    ran, now = _flat(json.loads(json.dumps(cfg))), _flat(json.loads(json.dumps(ref)))
    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(ran.items())
                    if k not in _NOT_CHANGES and k in now and now[k] != v)


def run_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        tr = r.get("training") or {}
        rows.append({
            "run_id": r["run_id"], "method": r.get("method"), "dataset": r.get("dataset"), "arch": r.get("arch"),
            "preset": r.get("preset"), "changes": preset_changes(r), "seed": r.get("seed"), "status": r.get("status"),
            "epochs": tr.get("epochs_done"),
            "train_min": round((r.get("timings") or {}).get("train_seconds", 0) / 60, 2),
        })
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _protocol_rank(p: str) -> tuple[int, str]:
    return (PROTOCOL_ORDER.index(p), p) if p in PROTOCOL_ORDER else (len(PROTOCOL_ORDER), p)


def headline(t: pd.DataFrame) -> pd.DataFrame:
    """The tidy rows that are headline numbers, with ``column``, scaled ``value`` and an order."""
    metric_order = list(HEADLINES)
    keep = []
    for row in t.itertuples(index=False):
        for i, (key, label, scale) in enumerate(HEADLINES.get(row.metric, [])):
            if key == row.key:
                keep.append({"run_id": row.run_id, "column": f"{row.protocol}/{label}",
                             "value": round(row.value * scale, 2 if scale != 1.0 else 4),
                             "n_examples": row.n_examples,
                             "order": (_protocol_rank(row.protocol), metric_order.index(row.metric), i)})
    return pd.DataFrame(keep, columns=["run_id", "column", "value", "n_examples", "order"])


def _wide(head: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    values = head.pivot_table(index="run_id", columns="column", values="value", aggfunc="first")
    counts = head.pivot_table(index="run_id", columns="column", values="n_examples", aggfunc="first")
    order = head.drop_duplicates("column").sort_values("order", kind="stable")["column"].tolist()
    counts = counts.reindex(columns=order)
    counts.columns = [f"{c} n" for c in counts.columns]
    wide = values.reindex(columns=order).join(counts)
    cols = []
    for c in order:
        cols += [c, f"{c} n"]
    return wide[cols].reset_index(), cols


def leaderboard(records: list[dict[str, Any]], reference: bool = False) -> pd.DataFrame:
    runs = run_table(records)
    head = headline(tidy(records))
    ref = reference_frame() if reference else None
    if ref is not None:
        ref_head = headline(ref[["run_id", "protocol", "metric", "key", "value", "n_examples"]])
        head = pd.concat([head, ref_head], ignore_index=True) if not head.empty else ref_head
    if head.empty:
        df = runs
        cols: list[str] = []
    else:
        wide, cols = _wide(head)
        df = runs.merge(wide, on="run_id", how="left")
    if ref is None:
        return df
    df.insert(0, "kind", "measured")
    meta = ref.drop_duplicates("run_id")[["run_id", "method", "dataset", "arch", "source", "note"]]
    rep = meta.assign(kind="reported")
    if not head.empty:
        rep = rep.merge(wide, on="run_id", how="left")
    df = pd.concat([df, rep], ignore_index=True)
    return df[["kind", *RUN_COLUMNS, *cols, *REF_COLUMNS]]


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
    if "kind" in df.columns:  # measured rows first, reported after; sorted within each group
        parts = [g.sort_values(column, ascending=ascending, na_position="last", kind="stable")
                 for _, g in df.groupby(df["kind"] != "measured", sort=True)]
        return pd.concat(parts) if parts else df
    return df.sort_values(column, ascending=ascending, na_position="last", kind="stable")


def _drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """With reference rows: drop columns empty in every row (e.g. training columns of a table of reported rows)."""
    keep = [c for c in df.columns if c in ("kind", "run_id") or df[c].notna().any()]
    return df[keep]


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        shown = df.astype(object).where(df.notna(), None)  # missing values blank in every column type
        text = shown.to_markdown(index=False, floatfmt="g", missingval="")
        if "kind" in df.columns and (df["kind"] == "reported").any():
            text += "\n\n" + REFERENCE_NOTE
        return text
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
            filters: tuple[str, ...] = (), reference: bool = False) -> str:
    records = load_records(out)
    if not records and not reference:
        raise BenchError(f"no runs under {Path(out) / 'runs'}/; train one with: bench run --method ce --preset smoke")
    df = leaderboard(records, reference=reference)
    df = apply_filters(df, filters)
    df = sort_table(df, sort, ascending)
    if reference:
        df = _drop_empty(df)
    return render(df, fmt)
