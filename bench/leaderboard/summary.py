"""A run's record as readable text: the full summary of `bench show` and the headline lines
`bench run` prints when it finishes. Metrics are shown as they present themselves
(:func:`metrics.presentation`), so no metric is named here."""

from __future__ import annotations

from pathlib import Path

from bench.core.records import live_status
from bench.run.evaluation import format_result
from metrics import presentation

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def _status(rec: dict, run_dir: Path) -> str:
    status = live_status(run_dir, rec)
    if status != rec.get("status"):
        return f"{status}: its process is gone; continue with bench run --resume {rec['run_id']}"
    return str(status)


def describe_record(rec: dict, run_dir: Path) -> str:
    """The readable summary of a run's record (`bench show`); relative artifact paths are under ``run_dir``."""
    env = rec.get("environment", {})
    tr = rec.get("training", {})
    lines = [
        f"run       {rec['run_id']}  ({_status(rec, run_dir)})",
        f"method    {rec.get('method')}  dataset {rec.get('dataset')}  arch {rec.get('arch')}  "
        f"preset {rec.get('preset')}  seed {rec.get('seed')}",
        f"training  {tr.get('steps_done', 0)}/{tr.get('total_steps', '?')} steps "
        f"({tr.get('epochs_done', 0)} epochs), {rec.get('timings', {}).get('train_seconds', 0):.1f} s, "
        f"{len(tr.get('rollbacks', []))} rollbacks, {len(tr.get('resumes', []))} resumes",
        f"git       {env.get('git', {}).get('revision')}{' (dirty)' if env.get('git', {}).get('dirty') else ''}",
        f"device    {env.get('device', {}).get('type')} {env.get('device', {}).get('name', '')}",
        f"torch     {env.get('packages', {}).get('torch')}",
    ]
    hist = [h for h in tr.get("history", []) if "loss" in h]
    if hist:
        last = hist[-1]
        terms = ", ".join(
            f"{k} {v:.4g}"
            for k, v in last.items()
            if k not in ("step", "epoch", "lr", "images_per_s")
        )
        lines.append(f"last log  step {last['step']}: {terms}")
    for v in tr.get("validation", [])[-1:]:
        lines.append(
            f"last val  {v['split']} accuracy {100 * v['accuracy']:.2f}% (n={v['n_examples']})"
        )
    for protocol, metrics in rec.get("evaluations", {}).items():
        lines.append(f"eval [{protocol}]")
        for name, res in metrics.items():
            if not isinstance(res, dict):
                continue
            when = f"  [{res['evaluated_at']}]" if res.get("evaluated_at") else ""
            lines.append(f"  {name:11s} {format_result(name, res)}{when}")
            if res.get("note"):
                lines.append(f"  {'':11s} note: {res['note']}")
            for reason in res.get("unreliable_reasons") or ():
                lines.append(f"  {'':11s} ! {reason}")
    if rec.get("message"):
        lines.append(f"message   {rec['message']}")
    arts = rec.get("artifacts", {})
    figures = {
        k: v for k, v in arts.items() if isinstance(v, str) and v.lower().endswith(FIGURE_SUFFIXES)
    }
    for name, path in arts.items():
        if name in figures:
            continue
        lines.append(f"artifact  {name}: {path}")
    if figures:
        lines.append("figures   (energy histograms, reliability diagrams, sample grids)")
        for name, path in sorted(figures.items()):
            p = Path(path) if Path(path).is_absolute() else (Path(run_dir) / path)
            mark = "" if p.is_file() else "  (missing)"
            lines.append(f"  {name:34s} {p.resolve().as_uri() if p.is_file() else p}{mark}")
    return "\n".join(lines)


def _shows_accuracy(metric: str) -> bool:
    """Whether ``metric`` headlines an accuracy in percent (clean, pgd, autoattack and any plugin alike)."""
    return any(h.key == "accuracy" and h.unit == "%" for h in presentation(metric).headlines)


def run_summary_lines(record: dict) -> list[str]:
    """The lines `bench run` prints when it finishes: per protocol, the accuracies its metrics headline
    (``<run-id> [<protocol>]: clean 91.20% (n=500), pgd 48.00% (n=500)``); `bench show` prints everything."""
    lines = []
    for protocol, metrics in (record.get("evaluations") or {}).items():
        parts = []
        for name, res in metrics.items():
            if isinstance(res, dict) and "accuracy" in res and _shows_accuracy(name):
                parts.append(f"{name} {100 * res['accuracy']:.2f}% (n={res.get('n_examples')})")
        if parts:
            lines.append(f"{record['run_id']} [{protocol}]: " + ", ".join(parts))
    return lines
