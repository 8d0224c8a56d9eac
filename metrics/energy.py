"""``energy``: the energy landscape of clean, adversarial and generated images.
E(x) = -logsumexp_y f(x)[y] of each set, their gaps, W1 distances, a histogram and the energies
themselves; what is reported and when ``pgd``'s adversarial examples are reused: docs/evaluation.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from bench.attacks.pgd import pgd_linf
from bench.core.errors import BenchError
from bench.core.io import save_figure, save_npz
from metrics.base import (
    Headline,
    MetricUnavailable,
    Setting,
    batches,
    kept_adversarial,
    pgd_attack_key,
    progress,
    register_metric,
    test_subset,
)
from metrics.images import SAMPLE_SOURCE, SAMPLER_STEPS
from metrics.pgd import PGD_SETTINGS


@torch.no_grad()
def energies(model, x: torch.Tensor, device, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size].to(device)
        xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
        out.append((-torch.logsumexp(model(xb).float(), dim=1)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def histogram(sets: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Top: the three distributions overlaid on shared bins. Bottom: each on its own bins (their ranges
    can differ by orders of magnitude, e.g. sampler outputs of a classifier not trained as an EBM)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    present = {k: v for k, v in sets.items() if v.size}
    vals = np.concatenate(list(present.values()))
    lo, hi = float(np.min(vals)), float(np.max(vals))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 61)
    colors = {"clean": "tab:blue", "adversarial": "tab:red", "generated": "tab:green"}
    fig = plt.figure(figsize=(7.2, 5.6), dpi=120)
    grid = fig.add_gridspec(2, max(1, len(present)), height_ratios=[1.4, 1])
    ax = fig.add_subplot(grid[0, :])
    for name, v in present.items():
        ax.hist(
            v,
            bins=bins,
            density=True,
            alpha=0.45,
            color=colors.get(name),
            label=f"{name} (n={v.size}, mean {v.mean():.3g}, std {v.std():.3g})",
        )
    ax.set_xlabel("E(x) = -logsumexp f(x)  (shared bins)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    for i, (name, v) in enumerate(present.items()):
        a = fig.add_subplot(grid[1, i])
        a.hist(v, bins=40, color=colors.get(name), alpha=0.7)
        a.set_title(name, fontsize=8)
        a.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def summary(res: dict) -> str:
    parts = [
        f"E clean {res['mean_clean']:.3f}",
        f"adv {res['mean_adv']:.3f}",
        f"gap_adv {res['gap_adv']:.3f}",
        f"W1 {res['w1_adv']:.3f}",
    ]
    if res.get("gap_gen") is not None:
        parts += [
            f"gen {res['mean_gen']:.3f}",
            f"gap_gen {res['gap_gen']:.3f}",
            f"W1 {res['w1_gen']:.3f}",
        ]
    return ", ".join(parts) + f"  n={res.get('n_examples')} (gen {res.get('n_generated', 0)})"


# the gaps E(x_adv) - E(x) and E(x_gen) - E(x) are signed: no direction is better
@register_metric(
    "energy",
    order=50,
    summary=summary,
    settings={
        # the PGD attack of its adversarial energies, without EOT (energies of a deterministic model)
        "attack": Setting(dict, fields={k: s for k, s in PGD_SETTINGS.items() if k != "eot"}),
        "n_generated": Setting(int, 1, unit="generated images"),
        "sampler_steps": SAMPLER_STEPS,
        "sample_source": SAMPLE_SOURCE,
    },
    headlines=(
        Headline("gap_adv", "energy.gap_adv", higher_is_better=None),
        Headline("gap_gen", "energy.gap_gen", higher_is_better=None),
    ),
)
def energy(model, data, settings, ctx) -> dict:
    from scipy.stats import wasserstein_distance

    atk = {
        "eps": 8 / 255,
        "alpha": 2 / 255,
        "steps": 20,
        "restarts": 1,
        **(settings.get("attack") or {}),
    }
    x, y = test_subset(data, settings.get("n_examples", 0))
    n = x.shape[0]
    if n == 0:
        raise BenchError("energy needs at least one test image; raise --n-examples")
    e_clean = energies(model, x, ctx.device, ctx.batch_size)

    # attacked without EOT below
    x_adv = kept_adversarial(ctx, pgd_attack_key({**atk, "eot": 1}, n, ctx.seed))
    adversarial_source = (
        "the pgd metric's examples (same attack, images and seed)"
        if x_adv is not None
        else "attacked here"
    )
    if x_adv is None:
        rng_state = torch.random.get_rng_state()
        # the pgd metric's random starts: the same attack gives the same examples
        torch.manual_seed(ctx.seed)
        adv = []
        try:
            nb = math.ceil(n / ctx.batch_size)
            for xb, yb in progress(
                batches(x, y, ctx.batch_size, ctx.device), nb, "energy/pgd", ctx.show_progress
            ):
                adv.append(
                    pgd_linf(
                        model,
                        xb,
                        yb,
                        eps=atk["eps"],
                        alpha=atk["alpha"],
                        steps=int(atk["steps"]),
                        restarts=int(atk.get("restarts", 1)),
                        mode="eval",
                    ).cpu()
                )
        finally:
            torch.random.set_rng_state(rng_state)
        x_adv = torch.cat(adv)
    e_adv = energies(model, x_adv, ctx.device, ctx.batch_size)

    e_gen = np.zeros(0)
    gen_info, gen_note = None, None
    try:
        from metrics.images import generated_samples

        n_gen = int(settings.get("n_generated") or n)
        gen, gen_info = generated_samples(model, data, {**settings, "n_samples": n_gen}, ctx)
        e_gen = energies(model, gen, ctx.device, ctx.batch_size)
    except MetricUnavailable as exc:
        gen_note = f"generated: n/a ({exc})"

    def stats(v):
        return (float(v.mean()), float(v.std())) if v.size else (None, None)

    (mc, sc), (ma, sa), (mg, sg) = stats(e_clean), stats(e_adv), stats(e_gen)
    out = {
        "mean_clean": mc,
        "std_clean": sc,
        "mean_adv": ma,
        "std_adv": sa,
        "mean_gen": mg,
        "std_gen": sg,
        "gap_adv": ma - mc,
        "gap_gen": (mg - mc) if mg is not None else None,
        "w1_adv": float(wasserstein_distance(e_clean, e_adv)),
        "w1_gen": float(wasserstein_distance(e_clean, e_gen)) if e_gen.size else None,
        "n_examples": n,
        "n_generated": int(e_gen.size),
        "attack": {**atk, "norm": "Linf", "kind": "pgd"},
        "adversarial_source": adversarial_source,
        "samples": gen_info,
    }
    if gen_note:
        out["note"] = gen_note
    if ctx.out_dir is not None:
        proto = ctx.protocol
        rel = Path("figures") / f"{proto}-energy.png"
        title = (
            f"[{proto}] PGD-{int(atk['steps'])} eps {atk['eps'] * 255:.3g}/255: gap_adv {out['gap_adv']:.3g}"
            + (f", gap_gen {out['gap_gen']:.3g}" if out["gap_gen"] is not None else "")
        )
        histogram(
            {"clean": e_clean, "adversarial": e_adv, "generated": e_gen},
            Path(ctx.out_dir) / rel,
            title,
        )
        # the energies themselves: `bench report` draws runs on one axis
        values = rel.with_suffix(".npz")
        save_npz(
            Path(ctx.out_dir) / values,
            clean=e_clean.astype(np.float32),
            adversarial=e_adv.astype(np.float32),
            generated=e_gen.astype(np.float32),
        )
        out["artifacts"] = {"energy_histogram": str(rel), "energy_values": str(values)}
    return out
