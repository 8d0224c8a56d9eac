"""How `bench compare` shows the leaderboard (``bench.leaderboard.compare``): the brief Markdown and
LaTeX view (one protocol, its headline numbers with the strongest attack only, settings every run
shares moved below the table; README "Evaluation"), the wide view, reliability marks, CSV and JSON."""

from __future__ import annotations

import json
import re
import textwrap
from typing import Any

import pandas as pd

from bench.core.errors import BenchError

MARKS = {"no": "!", "unchecked": "?", "stale": "†"}
MARK_NOTE = (
    "! failed a guardrail check (bench show RUN says which); ? stored before the checks (bench eval "
    "again); † of an earlier checkpoint than the run's evaluated one (bench show RUN says which)"
)
HELPERS = (" n", " reliable", " ci_lo", " ci_hi", " ±")  # the columns that qualify a number column


def number_columns(df: pd.DataFrame) -> list[str]:
    """The headline number columns (``<protocol>/<label>``), without their helper columns."""
    return [c for c in df.columns if "/" in c and not c.endswith(HELPERS)]


CAPTION_COLUMNS = ["dataset", "arch", "preset", "status"]
# the brief table's columns that name a run rather than hold a number
BRIEF_RUN_COLUMNS = ("kind", "run", "method", *CAPTION_COLUMNS, "changes", "seed", "seeds")
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

    def helper(suffix: str) -> Any:  # the qualifying column's value, None without the column
        return df[f"{c}{suffix}"].iloc[i] if f"{c}{suffix}" in df.columns else None

    if pd.isna(df[c].iloc[i]):
        return None
    text = _num(df[c].iloc[i])
    if pd.notna(helper(" ±")):
        text += f" ± {_num(helper(' ±'))}"
    if pd.notna(helper(" ci_lo")):
        text += f" [{_num(helper(' ci_lo'))}, {_num(helper(' ci_hi'))}]"
    text += MARKS.get(helper(" reliable"), "")
    if with_n and pd.notna(helper(" n")):
        text += f" (n={int(helper(' n'))})"
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


def protocol_counts(df: pd.DataFrame, meta: dict[str, dict]) -> dict[str, int]:
    """How many numbers ``df`` holds of each protocol that has any, in column order."""
    counts: dict[str, int] = {}
    for c, m in meta.items():
        if c in df.columns:
            counts[m["protocol"]] = counts.get(m["protocol"], 0) + int(df[c].notna().sum())
    return {p: k for p, k in counts.items() if k}


def pick_protocol(df: pd.DataFrame, meta: dict[str, dict], protocol: str | None) -> str | None:
    """``protocol`` if ``df`` has numbers of it (else one line naming those it has); without one,
    the protocol with the most numbers."""
    have = protocol_counts(df, meta)
    if protocol is not None and protocol not in have:
        raise BenchError(
            f"no numbers of protocol {protocol!r} in this table; it has: "
            f"{', '.join(sorted(have)) or 'none'}"
        )
    if protocol is not None or not have:
        return protocol
    return max(have, key=lambda p: (have[p], p == "standard"))


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


def _seed(s: Any) -> int | str | None:
    """A seed as an integer; a group's seeds (``0,1``, `bench compare --group seeds`) as they are."""
    if pd.isna(s):
        return None
    return s if isinstance(s, str) and not s.isdigit() else int(s)


def _run_columns(df: pd.DataFrame, out: pd.DataFrame) -> list[str]:
    """Fill ``out`` with the columns that tell the runs apart; return the settings all share."""
    if "kind" in df.columns:
        out["kind"] = list(df["kind"])
    out["run"] = [short_id(r) for r in df["run_id"]]
    out["method"] = list(df["method"])
    shared = []
    for col in (c for c in CAPTION_COLUMNS if c in df.columns):
        values = df[col].dropna().astype(str).unique()
        if len(values) > 1:
            out[col] = list(df[col])
        elif len(values) == 1:
            shared.append(f"{col} {values[0]}")
    changes = df["changes"].fillna("").astype(str) if "changes" in df.columns else pd.Series()
    if changes.nunique() == 1 and changes.iloc[0]:
        shared.append(f"changes {changes.iloc[0]}")
    elif changes.nunique() > 1:
        short = [re.sub(r"(^| )method\.", r"\1", c) for c in changes]  # the method's own
        out["changes"] = [_cut(c, CHANGES_WIDTH) for c in short]
    seeds = df["seed"].dropna() if "seed" in df.columns else pd.Series()
    if seeds.nunique() > 1 or seeds.astype(str).str.contains("repeated").any():
        out["seed"] = [_seed(s) for s in df["seed"]]
    if "seeds" in df.columns:
        out["seeds"] = list(df["seeds"])
    return shared


def _number_columns(df, meta, cols, out: pd.DataFrame) -> dict[str, str]:
    """Fill ``out`` with the numbers of ``cols``, short labels where unique; return the n shared by
    every run of a column (``*`` for a sample-size dependent metric) by label."""
    ns = {}
    # energy.gap_adv -> gap_adv, fid@500 -> fid (its n is below the table), when still unique
    short = [_short_label(meta[c]["label"]) for c in cols]
    for c, label in zip(cols, short):
        if short.count(label) > 1 or label in out.columns:
            label = meta[c]["label"]
        counts = df[f"{c} n"].dropna().unique() if f"{c} n" in df.columns else []
        if len(counts) == 1:
            ns[label] = f"{int(counts[0])}" + ("*" if "@" in meta[c]["label"] else "")
        out[label] = [cell(df, c, i, with_n=len(counts) != 1) for i in range(len(df))]
    return ns


def brief(
    df: pd.DataFrame, meta: dict[str, dict], protocol: str | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """(the brief table as text cells, caption lines)."""
    proto = pick_protocol(df, meta, protocol)
    cols = [c for c, m in meta.items() if c in df.columns and m["protocol"] == proto and m["brief"]]
    cols = _strongest(df, [c for c in cols if df[c].notna().any()], meta)
    out = pd.DataFrame(index=range(len(df)))
    shared = _run_columns(df, out)
    ns = _number_columns(df, meta, cols, out)
    caption = []
    if proto is not None:
        others = ", ".join(sorted(set(protocol_counts(df, meta)) - {proto}))
        also = f" (also stored: {others}; --protocol P shows one, --wide all)" if others else ""
        caption.append(f"protocol {proto}{also}")
    if ns:
        biased = any(v.endswith("*") for v in ns.values())
        note = "  (* under 10,000 samples: biased, compare only at equal n)" if biased else ""
        caption.append("n: " + ", ".join(f"{k} {v}" for k, v in ns.items()) + note)
    if shared:
        caption.append(", ".join(shared))
    return out, caption


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _fit_changes(table: pd.DataFrame, text: str) -> str:
    """The brief Markdown table with its ``changes`` cells cut (``…``) so that it fits WIDTH
    characters, down to 12 characters a cell; ``--wide`` and ``bench show`` give them whole."""
    excess = max(len(line) for line in text.splitlines()) - WIDTH
    longest = int(table["changes"].astype(str).str.len().max() or 0)
    if excess <= 0 or longest <= 12:
        return text
    width = max(12, longest - excess)
    cut = table.assign(changes=[_cut(c, width) for c in table["changes"].astype(str)])
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
    table = table.astype(object).where(table.notna(), None)  # a missing number: an empty cell
    text = table.to_markdown(index=False, floatfmt="g", missingval="")
    if not wide and meta is not None and "changes" in table.columns:
        text = _fit_changes(table, text)
    lines = caption + ([MARK_NOTE] if _marked(df) else []) + list(notes)
    lines = [w for line in lines for w in textwrap.wrap(line, WIDTH, break_on_hyphens=False)]
    return text + ("\n\n" + "\n".join(lines) if lines else "")
