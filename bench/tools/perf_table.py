"""`bench perf`'s report as text: the training-step table, then the sampler, FID-feature, AutoAttack
and guardrail sections (bench/tools/perf.py measures them; docs/scale.md reads them).
"""

from __future__ import annotations

from typing import Any


def _markdown(rows: list[dict[str, Any]]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt="g")


def _ms(seconds: float) -> float:
    return round(1e3 * seconds, 1)


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100 * v, 2)


def _step_row(r: dict[str, Any], extra_phases: list[str]) -> dict[str, Any]:
    ph = r["phases"]
    return {
        "method": r["method"],
        "variant": r["variant"],
        "arch": r["arch"],
        "batch": r["batch_size"],
        "img/s": round(r["images_per_s"], 1),
        "ms/step": _ms(r["seconds_per_step"]),
        **{f"{name} ms": _ms(ph.get(name, 0.0)) for name in ("sampler", "attack", "update")},
        **{f"{name.upper()} ms": _ms(ph.get(name, 0.0)) for name in extra_phases},
        "other ms": _ms(ph.get("other", 0.0)),
        "FE/img": round(r["fe_per_image"], 1),
        "GFLOP/step": round(r["step_gflop"], 2),
        "precision": r["precision"],
        "MFU %": round(100 * r["mfu"], 1) if r["mfu"] is not None else None,
        "of peak": r["peak"],
    }


def _sampler_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": r["method"],
        "sampler": r["kind"],
        "steps": r["steps"],
        "batch": r["batch_size"],
        "img/s": round(r["images_per_s"], 1),
        "ms/draw": round(r["ms_per_draw"], 1),
        "FE/img": round(r["fe_per_image"], 1),
    }


def _autoattack_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": r["run"],
        "method": r["method"],
        "arch": r["arch"],
        "version": r["version"],
        "n": r["n_examples"],
        "clean %": _pct(r["clean_accuracy"]),
        "robust %": _pct(r["robust_accuracy"]),
        "img/s": round(r["images_per_s"], 2),
        "s": round(r["seconds"], 1),
    }


def _guardrail_row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": r["run"],
        "method": r["method"],
        "n": r["n_examples"],
        "attack": f"PGD-{r['steps']}",
        "s without checks": round(r["seconds_bare"], 2),
        "s with checks": round(r["seconds_checked"], 2),
        "overhead %": round(100 * r["overhead"], 1),
    }


def _section(report: dict[str, Any], key: str, title: str, row) -> list[str]:
    """The table of ``report[key]`` under ``title``; nothing when it has no rows."""
    return ["", title, "", _markdown([row(r) for r in report[key]])] if report.get(key) else []


def _fid_lines(fid: dict[str, Any]) -> list[str]:
    if "skipped" in fid:
        return [f"FID features: skipped: {fid['skipped']}"]
    if not fid:
        return []
    return [
        f"FID features ({fid['extractor']}, {fid['precision']}, batch {fid['batch_size']}, "
        f"{fid['n_images']} images): {fid['images_per_s']:.1f} images/s"
    ]


def format_report(report: dict[str, Any]) -> str:
    results = report["results"]
    extra = [n for n in ("sam", "awp") if any(n in r["phases"] for r in results)]
    peaks = ", ".join(
        f"{name} {p['tflops']:.3g} TFLOP/s ({p['measured_by']})"
        for name, p in report["peaks"].items()
    )
    lines = [
        f"device: {report['device']}, torch {report['torch']}, preset {report['preset']}, "
        f"{report['date']}",
        f"peaks: {peaks or 'none measured'}; each row's MFU is against the peak named in 'of peak'",
        "ms/step: the timed loop, no phase synchronised; phase columns: that time split as a separate "
        "profiling pass measured it",
        "",
        _markdown([_step_row(r, extra) for r in results]),
        "",
    ]
    for m, ratios in report["ratios"].items():
        parts = [f"{k.replace('fast_vs_', 'fast/')} {v:.2f}x" for k, v in ratios.items()]
        if parts:
            lines.append(f"{m}: " + ", ".join(parts))
    title = "samplers (one draw of the training step's negative samples):"
    lines += _section(report, "samplers", title, _sampler_row)
    lines += ["", *_fid_lines(report.get("fid_features") or {})]
    title = "AutoAttack (the `autoattack` metric on trained runs' test images):"
    lines += _section(report, "autoattack", title, _autoattack_row) or [
        "AutoAttack: not timed; pass --aa-run RUN (a robust and a non-robust run) to time it"
    ]
    title = "guardrail checks (the `pgd` metric vs the same attack loop without its checks):"
    lines += _section(report, "guardrails", title, _guardrail_row)
    return "\n".join(lines)
