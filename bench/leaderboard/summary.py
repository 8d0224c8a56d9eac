"""A run's record as readable text: the summary `bench show` prints and the headline lines `bench
run` prints when it finishes. Each metric is shown as it presents itself (``metrics.presentation``),
so no metric is named here; docs/records.md describes the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.core.run_dirs import live_status
from bench.leaderboard.compare_view import MARKS
from bench.run.checkpoint_results import checkpoint_note
from bench.run.evaluation import format_result
from metrics import presentation

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
NOT_TERMS = ("step", "epoch", "lr", "images_per_s")  # logged beside the loss terms


def _status(rec: dict, run_dir: Path) -> str:
    status = live_status(run_dir, rec)
    if status != rec.get("status"):
        return f"{status}: its process is gone; continue with bench run --resume {rec['run_id']}"
    return str(status)


def _artifacts(arts: dict[str, Any], run_dir: Path) -> list[str]:
    """Artifacts by path; figures last, as links when the file is there."""
    figures = {
        k: v for k, v in arts.items() if isinstance(v, str) and v.lower().endswith(FIGURE_SUFFIXES)
    }
    lines = [f"artifact  {name}: {path}" for name, path in arts.items() if name not in figures]
    if figures:
        lines.append("figures   (energy histograms, reliability diagrams, sample grids)")
    for name, path in sorted(figures.items()):
        p = Path(path) if Path(path).is_absolute() else (Path(run_dir) / path)
        where = p.resolve().as_uri() if p.is_file() else f"{p}  (missing)"
        lines.append(f"  {name:34s} {where}")
    return lines


def describe_record(rec: dict, run_dir: Path) -> str:
    """The readable summary of a run's record (`bench show`); relative artifact paths are under ``run_dir``."""
    env, tr = rec.get("environment", {}), rec.get("training", {})
    git, device = env.get("git", {}), env.get("device", {})
    lines = [
        f"run       {rec['run_id']}  ({_status(rec, run_dir)})",
        f"method    {rec.get('method')}  dataset {rec.get('dataset')}  arch {rec.get('arch')}  "
        f"preset {rec.get('preset')}  seed {rec.get('seed')}",
        f"training  {tr.get('steps_done', 0)}/{tr.get('total_steps', '?')} steps "
        f"({tr.get('epochs_done', 0)} epochs), {rec.get('timings', {}).get('train_seconds', 0):.1f} "
        f"s, {len(tr.get('rollbacks', []))} rollbacks, {len(tr.get('resumes', []))} resumes",
        f"git       {git.get('revision')}{' (dirty)' if git.get('dirty') else ''}",
        f"device    {device.get('type')} {device.get('name', '')}",
        f"torch     {env.get('packages', {}).get('torch')}",
    ]
    hist = [h for h in tr.get("history", []) if "loss" in h]
    if hist:
        terms = ", ".join(f"{k} {v:.4g}" for k, v in hist[-1].items() if k not in NOT_TERMS)
        lines.append(f"last log  step {hist[-1]['step']}: {terms}")
    for v in tr.get("validation", [])[-1:]:
        acc = f"{100 * v['accuracy']:.2f}% (n={v['n_examples']})"
        lines.append(f"last val  {v['split']} accuracy {acc}")
    for protocol, metrics in rec.get("evaluations", {}).items():
        lines.append(f"eval [{protocol}]")
        for name, res in (item for item in metrics.items() if isinstance(item[1], dict)):
            when = f"  [{res['evaluated_at']}]" if res.get("evaluated_at") else ""
            lines.append(f"  {name:11s} {format_result(name, res)}{when}")
            lines += [f"  {'':11s} note: {res['note']}"] if res.get("note") else []
            stale = checkpoint_note(rec, res)
            lines += (
                [f"  {'':11s} {MARKS['stale']} {stale}; bench eval RUN measures those"]
                if stale
                else []
            )
            lines += [f"  {'':11s} {MARKS['no']} {r}" for r in res.get("unreliable_reasons") or ()]
    lines += [f"message   {rec['message']}"] if rec.get("message") else []
    return "\n".join(lines + _artifacts(rec.get("artifacts", {}), run_dir))


def _shows_accuracy(metric: str) -> bool:
    """Whether ``metric`` headlines an accuracy in percent (clean, pgd, autoattack and any plugin alike)."""
    return any(h.key == "accuracy" and h.unit == "%" for h in presentation(metric).headlines)


def run_summary_lines(record: dict) -> list[str]:
    """The lines `bench run` prints when it finishes: per protocol, the accuracies its metrics headline
    (``<run-id> [<protocol>]: clean 91.20% (n=500), pgd 48.00% (n=500)``); `bench show` prints everything."""
    lines = []
    for protocol, metrics in (record.get("evaluations") or {}).items():
        parts = [
            f"{name} {100 * res['accuracy']:.2f}% (n={res.get('n_examples')})"
            for name, res in metrics.items()
            if isinstance(res, dict) and "accuracy" in res and _shows_accuracy(name)
        ]
        if parts:
            lines.append(f"{record['run_id']} [{protocol}]: " + ", ".join(parts))
    return lines
