"""``calibration``: expected calibration error and a reliability diagram.
ECE = sum over equal-width confidence bins (``bins``, 15 by default) of
(|bin| / n) * |accuracy(bin) - mean confidence(bin)|, confidence = max softmax probability.
Also reports the maximum calibration error, the negative log-likelihood and the Brier score,
and writes ``figures/<protocol>-reliability.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.io import save_figure
from metrics.base import Headline, Setting, batches, register_metric, test_subset


def ece_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15):
    """(ECE, MCE, per-bin (count, accuracy, confidence)); bins are (lo, hi], the first includes 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    acc_sum = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf.astype(np.float64), minlength=n_bins)
    nz = counts > 0
    acc = np.where(nz, acc_sum / np.maximum(counts, 1), np.nan)
    cbar = np.where(nz, conf_sum / np.maximum(counts, 1), np.nan)
    gaps = np.abs(acc - cbar)
    ece = float(np.sum(counts[nz] / counts.sum() * gaps[nz])) if counts.sum() else 0.0
    mce = float(np.max(gaps[nz])) if nz.any() else 0.0
    return ece, mce, counts, acc, cbar


def reliability_diagram(counts, acc, cbar, ece: float, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_bins = len(counts)
    centers = (np.arange(n_bins) + 0.5) / n_bins
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(4.8, 5.6), dpi=120, gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.bar(
        centers,
        np.nan_to_num(acc),
        width=1 / n_bins,
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    ax.bar(
        centers,
        np.nan_to_num(cbar - acc),
        bottom=np.nan_to_num(acc),
        width=1 / n_bins,
        color="tab:red",
        alpha=0.35,
        edgecolor="tab:red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}  ECE {100 * ece:.2f}%", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax2.bar(centers, counts, width=1 / n_bins, color="gray", edgecolor="black")
    ax2.set_xlabel("confidence (max softmax)")
    ax2.set_ylabel("count")
    fig.tight_layout()
    return save_figure(fig, path)


def summary(res: dict) -> str:
    return f"ECE {100 * res['ece']:.2f}% ({res['bins']} bins), NLL {res['nll']:.3f}  n={res.get('n_examples')}"


@register_metric(
    "calibration",
    order=60,
    summary=summary,
    settings={"bins": Setting(int, 1, 10_000)},
    brief=False,
    headlines=(Headline("ece", "ece", scale=100.0, unit="%", higher_is_better=False, decimals=2),),
)
@torch.no_grad()
def calibration(model, data, settings, ctx) -> dict:
    n_bins = int(settings.get("bins", 15))
    x, y = test_subset(data, settings.get("n_examples", 0))
    confs, corrects, nll, brier = [], [], 0.0, 0.0
    for xb, yb in batches(x, y, ctx.batch_size, ctx.device):
        logits = model(xb).float()
        p = logits.softmax(1)
        c, pred = p.max(1)
        confs.append(c.cpu())
        corrects.append((pred == yb).cpu())
        nll += float(F.cross_entropy(logits, yb, reduction="sum"))
        brier += float(((p - F.one_hot(yb, p.shape[1]).float()) ** 2).sum())
    conf = torch.cat(confs).numpy()
    correct = torch.cat(corrects).numpy()
    n = conf.shape[0]
    ece, mce, counts, acc, cbar = ece_bins(conf, correct, n_bins)
    out = {
        "ece": ece,
        "mce": mce,
        "nll": nll / n,
        "brier": brier / n,
        "accuracy": float(correct.mean()),
        "mean_confidence": float(conf.mean()),
        "bins": n_bins,
        "n_examples": n,
        "bin_counts": counts.astype(int).tolist(),
    }
    if ctx.out_dir is not None:
        proto = ctx.protocol
        rel = Path("figures") / f"{proto}-reliability.png"
        reliability_diagram(counts, acc, cbar, ece, Path(ctx.out_dir) / rel, f"[{proto}] n={n}")
        out["artifacts"] = {"reliability_diagram": str(rel)}
    return out
