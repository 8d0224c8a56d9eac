"""How `bench compare` shows the leaderboard: the brief default view, marks and the output formats.

The leaderboard (:mod:`bench.leaderboard.compare`) has every headline number of every protocol, each with its
sample count, reliability and (``--ci``) interval columns. Read as text it is too wide, so
Markdown and LaTeX show a brief view by default:
- one protocol: ``--protocol``, else the one with the most numbers. It is named in the caption,
  and protocols are never mixed;
- the metrics that present themselves as brief (no calibration, no IS), ordered accuracy →
  robustness → generation → energies;
- of several attacks, the strongest a run has: a weaker attack's column goes when every run that
  has it also has a stronger one;
- run ids shortened to their random suffix; columns that hold one value for every row (dataset,
  arch, preset, status, and n when it is the same for every run) moved into the caption.
``--wide`` (and CSV/JSON, always) gives every column.
"""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pandas as pd

from bench.core.errors import BenchError

MARKS = {"no": "!", "unchecked": "?"}
MARK_NOTE = "! failed a guardrail check (bench show RUN says which); ? stored before the checks (bench eval again)"
HELPERS = (" n", " reliable", " ci_lo", " ci_hi", " ±")  # the columns that qualify a number column


def number_columns(df: pd.DataFrame) -> list[str]:
    """The headline number columns (``<protocol>/<label>``), without their helper columns."""
    return [c for c in df.columns if "/" in c and not c.endswith(HELPERS)]


CAPTION_COLUMNS = ["dataset", "arch", "preset", "status"]
CHANGES_WIDTH = 24
WIDTH = 120  # the notes below a Markdown table are wrapped to this width
_RUN_ID = re.compile(r"\d{8}-\d{6}-.+-([0-9a-f]{6})")


def short_id(run_id: str) -> str:
    m = _RUN_ID.fullmatch(str(run_id))
    return m.group(1) if m else str(run_id)


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def cell(df: pd.DataFrame, c: str, i: int, with_n: bool = False) -> str | None:
    """One number as text: value, ``± spread``, ``[lo, hi]``, ``(n=..)`` and its reliability mark."""
    v = df[c].iloc[i]
    if pd.isna(v):
        return None
    text = _num(v)
    if f"{c} ±" in df.columns and pd.notna(df[f"{c} ±"].iloc[i]):
        text += f" ± {_num(df[f'{c} ±'].iloc[i])}"
    if f"{c} ci_lo" in df.columns and pd.notna(df[f"{c} ci_lo"].iloc[i]):
        text += f" [{_num(df[f'{c} ci_lo'].iloc[i])}, {_num(df[f'{c} ci_hi'].iloc[i])}]"
    if f"{c} reliable" in df.columns:
        text += MARKS.get(df[f"{c} reliable"].iloc[i], "")
    if with_n and f"{c} n" in df.columns and pd.notna(df[f"{c} n"].iloc[i]):
        text += f" (n={int(df[f'{c} n'].iloc[i])})"
    return text


def for_reading(df: pd.DataFrame) -> pd.DataFrame:
    """The wide table as text cells: each number with its spread, interval and mark; the helper
    columns behind them (except ``n``) folded in."""
    out = df.astype(object).where(df.notna(), None)
    for c in df.columns:
        if any(f"{c}{s}" in df.columns for s in (" reliable", " ci_lo", " ±")):
            out[c] = [cell(df, c, i) for i in range(len(df))]
    return out.drop(columns=[c for c in df.columns if c.endswith(HELPERS[1:])])


def _short_label(label: str) -> str:
    """``energy.gap_adv`` -> ``gap_adv``, ``fid@500`` -> ``fid``, ``pgd[eps=0.03]`` kept whole."""
    head, bracket, rest = re.sub(r"@\d+$", "", label).partition("[")
    return head.split(".")[-1] + bracket + rest


def pick_protocol(df: pd.DataFrame, meta: dict[str, dict], protocol: str | None) -> str | None:
    present = {}
    for c, m in meta.items():
        if c in df.columns:
            present[m["protocol"]] = present.get(m["protocol"], 0) + int(df[c].notna().sum())
    if protocol is not None:
        if not present.get(protocol):
            raise BenchError(
                f"no numbers of protocol {protocol!r} in this table; it has: "
                f"{', '.join(sorted(p for p, k in present.items() if k)) or 'none'}"
            )
        return protocol
    have = {p: k for p, k in present.items() if k}
    return max(have, key=lambda p: (have[p], p == "standard")) if have else None


def _strongest(df: pd.DataFrame, cols: list[str], meta: dict[str, dict]) -> list[str]:
    """Drop a checked (attack) column when every row that has it also has a stronger attack's number."""
    attacks = [c for c in cols if meta[c]["checked"]]
    keep = []
    for c in cols:
        stronger = [d for d in attacks if meta[d]["order"] > meta[c]["order"]]
        if c in attacks and stronger:
            has = df[c].notna()
            if not has.any() or df.loc[has, stronger].notna().any(axis=1).all():
                continue
        keep.append(c)
    return keep


def brief(
    df: pd.DataFrame, meta: dict[str, dict], protocol: str | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """(the brief table as text cells, caption lines)."""
    proto = pick_protocol(df, meta, protocol)
    cols = [c for c, m in meta.items() if c in df.columns and m["protocol"] == proto and m["brief"]]
    cols = _strongest(df, [c for c in cols if df[c].notna().any()], meta)
    out = pd.DataFrame(index=range(len(df)))
    caption = []
    if "kind" in df.columns:
        out["kind"] = list(df["kind"])
    out["run"] = [short_id(r) for r in df["run_id"]]
    out["method"] = list(df["method"])
    fixed = []
    for col in CAPTION_COLUMNS:
        if col not in df.columns:
            continue
        values = df[col].dropna().astype(str).unique()
        if len(values) <= 1:
            if len(values) == 1:
                fixed.append(f"{col} {values[0]}")
        else:
            out[col] = list(df[col])
    changes = df["changes"].fillna("").astype(str).unique() if "changes" in df.columns else []
    if len(changes) == 1 and changes[0]:
        fixed.append(f"changes {changes[0]}")
    elif len(changes) > 1:
        short = [
            re.sub(r"(^| )method\.", r"\1", str(c)) for c in df["changes"].fillna("")
        ]  # the method's own
        out["changes"] = [
            c if len(c) <= CHANGES_WIDTH else c[: CHANGES_WIDTH - 1] + "…" for c in short
        ]
    if "seed" in df.columns and df["seed"].dropna().nunique() > 1:
        out["seed"] = [None if pd.isna(s) else int(s) for s in df["seed"]]
    if "seeds" in df.columns:
        out["seeds"] = list(df["seeds"])
    ns = {}
    # energy.gap_adv -> gap_adv, fid@500 -> fid (its n is below the table), when still unique
    short = [_short_label(meta[c]["label"]) for c in cols]
    for c, brief_label in zip(cols, short):
        label = (
            brief_label
            if short.count(brief_label) == 1 and brief_label not in out.columns
            else meta[c]["label"]
        )
        counts = df[f"{c} n"].dropna().unique() if f"{c} n" in df.columns else []
        uniform = len(counts) == 1
        if uniform:
            ns[label] = f"{int(counts[0])}" + ("*" if "@" in meta[c]["label"] else "")
        out[label] = [cell(df, c, i, with_n=not uniform) for i in range(len(df))]
    if proto is not None:
        others = sorted(
            {m["protocol"] for c, m in meta.items() if c in df.columns and df[c].notna().any()}
            - {proto}
        )
        caption.append(
            f"protocol {proto}"
            + (
                f" (also stored: {', '.join(others)}; --protocol P shows one, --wide all)"
                if others
                else ""
            )
        )
    if ns:
        caption.append(
            "n: "
            + ", ".join(f"{k} {v}" for k, v in ns.items())
            + (
                "  (* under 10,000 samples: biased, compare only at equal n)"
                if any(v.endswith("*") for v in ns.values())
                else ""
            )
        )
    if fixed:
        caption.append(", ".join(fixed))
    return out, caption


def _fit_changes(table: pd.DataFrame, text: str) -> str:
    """The brief Markdown table with its ``changes`` cells cut (``…``) so that it fits WIDTH
    characters, down to 12 characters a cell; ``--wide`` and ``bench show`` give them whole."""
    excess = max(len(line) for line in text.splitlines()) - WIDTH
    longest = int(table["changes"].astype(str).str.len().max() or 0)
    if excess <= 0 or longest <= 12:
        return text
    width = max(12, longest - excess)
    cut = table.assign(
        changes=[
            c if len(c) <= width else c[: width - 1] + "…" for c in table["changes"].astype(str)
        ]
    )
    return cut.to_markdown(index=False, floatfmt="g", missingval="")


def _marked(df: pd.DataFrame) -> bool:
    return any(c.endswith(" reliable") and df[c].isin(list(MARKS)).any() for c in df.columns)


def machine(df: pd.DataFrame) -> pd.DataFrame:
    """Counts and seeds as integers (CSV shows ``500``, not ``500.0``)."""
    out = df.copy()
    for c in out.columns:
        if (c.endswith(" n") or c in ("seed", "seeds")) and pd.api.types.is_numeric_dtype(out[c]):
            out[c] = out[c].round().astype("Int64")
    return out


def render(
    df: pd.DataFrame,
    fmt: str,
    meta: dict[str, dict] | None = None,
    wide: bool = False,
    protocol: str | None = None,
    notes: tuple[str, ...] = (),
) -> str:
    """The table in ``fmt``: md / latex (brief unless ``wide``), csv / json (every column)."""
    if fmt in ("csv", "json"):
        table = machine(df)
        if fmt == "csv":
            return table.to_csv(index=False)
        rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        return json.dumps(rows, indent=2, ensure_ascii=False, default=str)
    if fmt not in ("md", "latex"):
        raise BenchError(f"unknown format {fmt!r}; choose md, csv, latex or json")
    if wide or meta is None:
        table, caption = for_reading(machine(df)), []
    else:
        table, caption = brief(df, meta, protocol)
    if fmt == "latex":
        return table.to_latex(
            index=False, na_rep="", escape=True, caption=" | ".join(caption) or None
        )
    text = table.to_markdown(index=False, floatfmt="g", missingval="")
    if not wide and meta is not None and "changes" in table.columns:
        text = _fit_changes(table, text)
    lines = caption + ([MARK_NOTE] if _marked(df) else []) + list(notes)
    lines = [w for line in lines for w in textwrap.wrap(line, WIDTH, break_on_hyphens=False)]
    return text + ("\n\n" + "\n".join(lines) if lines else "")
