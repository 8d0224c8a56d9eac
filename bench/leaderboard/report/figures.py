"""The report's figures (matplotlib, Agg): the trade-off plane, the energy panels and the training
curves. Each function returns a figure; ``bench.leaderboard.report.page`` writes and embeds it. Every figure
names its protocol and sample counts in its titles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.leaderboard.report.tables import Plane, describe_counts

ENERGY_COLORS = {"clean": "#1f77b4", "adversarial": "#d62728", "generated": "#2ca02c"}
NO_GENERATION = "#9a9a9a"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def tradeoff(planes: list[Plane]):
    """One panel per protocol: clean accuracy (x) against the strongest attack's robust accuracy (y),
    generation score as colour, the Pareto front of the measured runs on the two accuracies (dashed),
    the runs on the three-axis front ringed, seeds as error bars and reported rows as hollow markers."""
    plt = _pyplot()
    from matplotlib import cm, colors

    fig, axes = plt.subplots(1, len(planes), figsize=(6.6 * len(planes), 6.0), squeeze=False)
    for ax, plane in zip(axes[0], planes):
        gens = [p.generation for p in plane.points if p.generation is not None]
        norm = (
            colors.Normalize(min(gens), max(gens) if max(gens) > min(gens) else min(gens) + 1)
            if gens
            else None
        )
        cmap = plt.get_cmap("viridis_r")  # lower FID/KID is better: better is brighter
        missing_gen = False
        for p in plane.points:
            color = (
                cmap(norm(p.generation))
                if p.generation is not None and norm is not None
                else NO_GENERATION
            )
            missing_gen |= p.generation is None and p.kind != "reported"
            hollow = p.kind == "reported"
            marker = "D" if hollow else ("s" if p.kind == "external" else "o")
            if p.clean_err or p.robust_err:
                ax.errorbar(
                    p.clean,
                    p.robust,
                    xerr=p.clean_err or None,
                    yerr=p.robust_err or None,
                    fmt="none",
                    ecolor="#555555",
                    elinewidth=1,
                    capsize=3,
                    zorder=2,
                )
            ax.scatter(
                [p.clean],
                [p.robust],
                s=90,
                marker=marker,
                facecolors="none" if hollow else [color],
                edgecolors=[color] if hollow else "black",
                linewidths=1.8 if hollow else 0.8,
                zorder=3,
            )
            text = (
                p.label
                + (f" ×{p.seeds}" if p.seeds > 1 else "")
                + ("  !" if p.reliable == "no" else "")
            )
            ax.annotate(
                text,
                (p.clean, p.robust),
                textcoords="offset points",
                xytext=(6, 5),
                fontsize=8,
                color="#444444" if hollow else "black",
            )
        front3 = plane.pareto3() if plane.generation_column else []
        if front3:  # none of them is beaten on all three axes at once: the trilemma's front
            ax.scatter(
                [p.clean for p in front3],
                [p.robust for p in front3],
                s=300,
                facecolors="none",
                edgecolors="#ff7f0e",
                linewidths=2.0,
                zorder=2,
            )
            ax.scatter(
                [],
                [],
                s=90,
                facecolors="none",
                edgecolors="#ff7f0e",
                linewidths=2.0,  # the legend's ring
                label=f"ringed: no run beats it on clean, robust and "
                f"{plane.generation_column.split('/', 1)[1]} at once",
            )
        front = plane.pareto()
        if len(front) > 1:
            xs, ys = [front[0].clean], [front[0].robust]
            for p in front[1:]:  # the staircase the front dominates
                xs += [p.clean, p.clean]
                ys += [ys[-1], p.robust]
            ax.plot(
                xs,
                ys,
                color="#ff7f0e",
                lw=1.2,
                ls="--",
                zorder=1,
                label="dashed: Pareto front on clean and robust (measured)",
            )
        elif front:
            ax.scatter([], [], color="#ff7f0e", label="Pareto front on clean and robust: one run")
        if gens:
            sm = cm.ScalarMappable(norm=norm, cmap=cmap)
            gen_name = plane.generation_column.split("/", 1)[1]
            bar = fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.03)
            bar.set_label(
                f"{gen_name} ({describe_counts(plane.n_examples.get(plane.generation_column, []))}, "
                "lower is better)"
            )
        if missing_gen:
            ax.scatter(
                [],
                [],
                color=NO_GENERATION,
                edgecolors="black",
                label="grey: no FID/KID stored (bench eval RUN --metrics fid,kid)",
            )
        if any(p.kind == "external" for p in plane.points):
            ax.scatter(
                [],
                [],
                marker="s",
                color=NO_GENERATION,
                edgecolors="black",
                label="external model, evaluated here",
            )
        if any(p.kind == "reported" for p in plane.points):
            ax.scatter(
                [],
                [],
                marker="D",
                facecolors="none",
                edgecolors="black",
                label="reported (not measured here)",
            )
        if any(p.seeds > 1 for p in plane.points):
            ax.errorbar(
                [],
                [],
                xerr=[],
                yerr=[],
                fmt="none",
                ecolor="#555555",
                label="95% t-interval over seeds",
            )
        attacks = ", ".join(a.split("/", 1)[1] for a in plane.attacks)
        ax.set_xlabel(
            f"clean accuracy % ({describe_counts(plane.n_examples.get(plane.clean_column, []))})"
        )
        ax.set_ylabel(
            f"robust accuracy % "
            f"({describe_counts(sorted({n for a in plane.attacks for n in plane.n_examples.get(a, [])}))})"
        )
        ax.set_title(
            f"protocol {plane.protocol} · {plane.dataset}\nrobust: strongest stored of {attacks}",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
        labels = ax.get_legend_handles_labels()[1]
        ax.legend(
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.13),
            frameon=False,
            ncol=1 if max(map(len, labels), default=0) > 45 else 2,
        )  # long lines side by side overflow the figure
        _pad_limits(ax, plane)
    fig.tight_layout()
    return fig


def _pad_limits(ax, plane: Plane) -> None:
    xs = [p.clean for p in plane.points]
    ys = [p.robust for p in plane.points]
    for vals, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        lo, hi = min(vals), max(vals)
        pad = max((hi - lo) * 0.15, 2.0)
        setter(max(lo - pad, 0.0), min(hi + pad * 1.6, 100.0))


@dataclass
class EnergyPanel:
    title: str  # run and protocol
    values: dict[str, np.ndarray]  # clean / adversarial / generated energies
    result: dict[str, Any]  # the stored energy result (gaps, W1, attack, n)


# a row whose own values span less than this share of the shared axis gets a zoomed inset
ZOOM_BELOW = 0.2


def _own_range(panel: EnergyPanel) -> tuple[float, float] | None:
    v = (
        np.concatenate([x for x in panel.values.values() if x.size])
        if any(x.size for x in panel.values.values())
        else None
    )
    if v is None:
        return None
    lo, hi = np.percentile(v, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def energy_panels(panels: list[EnergyPanel], protocol: str):
    """The paper's figure for every run: histograms of E(x) for clean, adversarial and generated
    samples, one row per run on a shared axis, with the two gaps and W1 distances printed. A run
    whose energies span a small part of that axis (another run's lie far away, e.g. a classifier's
    generated samples at E = -400 beside energies near -5) gets an inset on its own range, so its
    three histograms stay readable."""
    plt = _pyplot()
    allv = np.concatenate([v for p in panels for v in p.values.values() if v.size])
    lo, hi = np.percentile(allv, [0.5, 99.5]) if allv.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi, 61)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8.5, 2.3 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    for ax, panel in zip(axes[:, 0], panels):
        outside = 0
        for name, v in panel.values.items():
            if not v.size:
                continue
            outside += int(((v < lo) | (v > hi)).sum())
            ax.hist(
                np.clip(v, lo, hi),
                bins=bins,
                density=True,
                alpha=0.45,
                color=ENERGY_COLORS.get(name),
                label=f"{name} (n={v.size})",
            )
        r = panel.result
        lines = [f"gap adv {r['gap_adv']:+.3g}   W1 {r['w1_adv']:.3g}"]
        if r.get("gap_gen") is not None:
            lines.append(f"gap gen {r['gap_gen']:+.3g}   W1 {r['w1_gen']:.3g}")
        else:
            lines.append("generated: none stored")
        if outside:
            lines.append(f"{outside} outside the shared axis (at its edge)")
        ax.text(
            0.99,
            0.95,
            "\n".join(lines),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            family="monospace",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"},
        )
        ax.set_title(panel.title, fontsize=9, loc="left")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper left")
        own = _own_range(panel)
        if own is not None and (own[1] - own[0]) < ZOOM_BELOW * (hi - lo):
            _zoom_inset(ax, panel, own)
    atk = panels[0].result.get("attack") or {}
    attack = (
        f"PGD-{int(atk.get('steps', 0))} eps {float(atk.get('eps', 0)) * 255:.3g}/255"
        if atk
        else "PGD"
    )
    axes[-1, 0].set_xlabel(
        f"energy E(x) = -logsumexp f(x)   (protocol {protocol}; adversarial: {attack})"
    )
    fig.tight_layout()
    return fig


def _zoom_inset(ax, panel: EnergyPanel, own: tuple[float, float]) -> None:
    """The row's histograms again on its own range, in an inset between the legend and the numbers."""
    inset = ax.inset_axes([0.22, 0.14, 0.29, 0.6])
    bins = np.linspace(own[0], own[1], 41)
    for name, v in panel.values.items():
        if v.size:
            inset.hist(
                np.clip(v, *own), bins=bins, density=True, alpha=0.45, color=ENERGY_COLORS.get(name)
            )
    inset.set_title("zoom: this run's own range", fontsize=6, pad=2)
    inset.tick_params(labelsize=6, length=2)
    inset.set_yticks([])
    inset.set_gid("energy-zoom")


CURVE_GROUPS = (  # the panels of the training curves, by the logged term's name
    (
        "loss terms",
        lambda k: k in ("loss", "ce", "px", "adv", "align", "kl", "energy_sq", "robust"),
    ),
    ("accuracy (training batch)", lambda k: k.startswith("acc")),
    ("energies", lambda k: k.startswith("e_")),
    ("learning rate", lambda k: k == "lr"),
)
NOT_CURVES = {"step", "epoch", "images_per_s"}


def curve_keys(histories: dict[str, list[dict[str, Any]]]) -> list[str]:
    keys: list[str] = []
    for hist in histories.values():
        for entry in hist:
            for k, v in entry.items():
                if (
                    k not in keys
                    and k not in NOT_CURVES
                    and isinstance(v, (int, float))
                    and not isinstance(v, bool)
                ):
                    keys.append(k)
    return keys


def training_curves(
    histories: dict[str, list[dict[str, Any]]], validations: dict[str, list[dict[str, Any]]]
):
    """Every logged term against the step, one panel per term, a line per run; validation accuracy
    (with its n) in a panel of its own."""
    plt = _pyplot()
    keys = curve_keys(histories)
    order = [k for _, match in CURVE_GROUPS for k in keys if match(k)]
    keys = list(dict.fromkeys(order + keys))
    has_val = any(validations.values())
    n_panels = len(keys) + int(has_val)
    cols = 4
    rows = max(1, math.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    flat = list(axes.ravel())
    colors = plt.get_cmap("tab10")
    runs = list(histories)
    for ax, key in zip(flat, keys):
        for i, run in enumerate(runs):
            pts = [
                (e["step"], e[key]) for e in histories[run] if isinstance(e.get(key), (int, float))
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, lw=1.1, color=colors(i % 10), label=run)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    if has_val:
        ax = flat[len(keys)]
        ns = set()
        for i, run in enumerate(runs):
            val = validations.get(run) or []
            if val:
                ax.plot(
                    [v["step"] for v in val],
                    [100 * v["accuracy"] for v in val],
                    marker="o",
                    ms=3,
                    color=colors(i % 10),
                    label=run,
                )
                ns |= {v.get("n_examples") for v in val}
        ax.set_title(
            f"validation accuracy % (test split, {describe_counts(sorted(n for n in ns if n))})",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    for ax in flat[n_panels:]:
        ax.axis("off")
    for ax in flat[:n_panels]:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False
        )
    fig.tight_layout(rect=(0, 0.06 if len(labels) <= 4 else 0.1, 1, 1))
    return fig
