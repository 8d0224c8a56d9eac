"""The report's figures (matplotlib, Agg): the trade-off plane, the energy panels and the training
curves, each naming its protocol and sample counts; docs/report.md describes them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.leaderboard.report.tables import Plane, PlanePoint, describe_counts

ENERGY_COLORS = {"clean": "#1f77b4", "adversarial": "#d62728", "generated": "#2ca02c"}
NO_GENERATION = "#9a9a9a"
GAPS_TEXT = {"ha": "right", "va": "top", "fontsize": 8, "family": "monospace"}
GAPS_TEXT["bbox"] = {"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"}
ZOOM_BELOW = 0.2  # an energy row whose values span less of the shared axis gets a zoomed inset
FRONT = "#ff7f0e"
RING = {"facecolors": "none", "edgecolors": FRONT, "linewidths": 2.0}
MARKERS = {"reported": "D", "external": "s"}  # measured runs: "o"
SEED_BARS = {"fmt": "none", "ecolor": "#555555"}
TEXT = {False: "black", True: "#444444"}  # a point's label; reported rows in grey
# the legend's entry for each kind of point a plane may hold: (which points, label, marker style)
POINT_KINDS = (
    (
        lambda p: p.generation is None and p.kind != "reported",
        "grey: no FID/KID stored (bench eval RUN --metrics fid,kid)",
        {"color": NO_GENERATION, "edgecolors": "black"},
    ),
    (
        lambda p: p.kind == "external",
        "external model, evaluated here",
        {"marker": MARKERS["external"], "color": NO_GENERATION, "edgecolors": "black"},
    ),
    (
        lambda p: p.kind == "reported",
        "reported (not measured here)",
        {"marker": MARKERS["reported"], "facecolors": "none", "edgecolors": "black"},
    ),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _metric(column: str) -> str:
    return column.split("/", 1)[1]


def tradeoff(planes: list[Plane]):
    """One panel per protocol: clean accuracy (x) against the strongest attack's robust accuracy (y),
    generation score as colour, the Pareto front of the measured runs on the two accuracies (dashed),
    the runs on the three-axis front ringed, seeds as error bars and reported rows as hollow markers."""
    plt = _pyplot()
    from matplotlib import cm, colors

    fig, axes = plt.subplots(1, len(planes), figsize=(6.6 * len(planes), 6.0), squeeze=False)
    cmap = plt.get_cmap("viridis_r")  # lower FID/KID is better: better is brighter
    for ax, plane in zip(axes[0], planes):
        gens = [p.generation for p in plane.points if p.generation is not None]
        lo, hi = (min(gens), max(gens)) if gens else (0, 0)
        norm = colors.Normalize(lo, hi if hi > lo else lo + 1) if gens else None
        for p in plane.points:
            _point(ax, p, NO_GENERATION if p.generation is None else cmap(norm(p.generation)))
        _fronts(ax, plane)
        if gens:
            scale = cm.ScalarMappable(norm=norm, cmap=cmap)
            bar = fig.colorbar(scale, ax=ax, fraction=0.046, pad=0.03)
            n = describe_counts(plane.n_examples.get(plane.generation_column, []))
            bar.set_label(f"{_metric(plane.generation_column)} ({n}, lower is better)")
        _annotate_axes(ax, plane)
        _pad_limits(ax, plane)
    fig.tight_layout()
    return fig


def _point(ax, p: PlanePoint, color) -> None:
    """One run (or group of seeds, or reported row): marker, error bars and its label."""
    hollow = p.kind == "reported"
    if p.clean_err or p.robust_err:
        bars = {"xerr": p.clean_err or None, "yerr": p.robust_err or None}
        ax.errorbar(p.clean, p.robust, elinewidth=1, capsize=3, zorder=2, **bars, **SEED_BARS)
    edges = (
        {"facecolors": "none", "edgecolors": [color], "linewidths": 1.8}
        if hollow
        else {"facecolors": [color], "edgecolors": "black", "linewidths": 0.8}
    )
    ax.scatter([p.clean], [p.robust], s=90, marker=MARKERS.get(p.kind, "o"), zorder=3, **edges)
    text = p.label + (f" ×{p.seeds}" if p.seeds > 1 else "") + ("  !" if p.reliable == "no" else "")
    where = {"textcoords": "offset points", "xytext": (6, 5)}
    ax.annotate(text, (p.clean, p.robust), fontsize=8, color=TEXT[hollow], **where)


def _fronts(ax, plane: Plane) -> None:
    """The trilemma's front ringed; the Pareto front on the two accuracies as a dashed staircase."""
    front3 = plane.pareto3() if plane.generation_column else []
    if front3:  # none of them is beaten on all three axes at once
        ax.scatter([p.clean for p in front3], [p.robust for p in front3], s=300, zorder=2, **RING)
        gen = _metric(plane.generation_column)
        label = f"ringed: no run beats it on clean, robust and {gen} at once"
        ax.scatter([], [], s=90, label=label, **RING)  # the legend's ring
    front = plane.pareto()
    if len(front) > 1:
        xs, ys = [front[0].clean], [front[0].robust]
        for p in front[1:]:  # the staircase the front dominates
            xs += [p.clean, p.clean]
            ys += [ys[-1], p.robust]
        label = "dashed: Pareto front on clean and robust (measured)"
        ax.plot(xs, ys, color=FRONT, lw=1.2, ls="--", zorder=1, label=label)
    elif front:
        ax.scatter([], [], color=FRONT, label="Pareto front on clean and robust: one run")


def _annotate_axes(ax, plane: Plane) -> None:
    """Legend entries for the kinds of point drawn (markers on no data), axis labels, title."""
    for which, label, style in POINT_KINDS:
        if any(map(which, plane.points)):
            ax.scatter([], [], label=label, **style)
    if any(p.seeds > 1 for p in plane.points):
        ax.errorbar([], [], xerr=[], yerr=[], label="95% t-interval over seeds", **SEED_BARS)
    attack_n = sorted({n for a in plane.attacks for n in plane.n_examples.get(a, [])})
    clean_n = describe_counts(plane.n_examples.get(plane.clean_column, []))
    ax.set_xlabel(f"clean accuracy % ({clean_n})")
    ax.set_ylabel(f"robust accuracy % ({describe_counts(attack_n)})")
    attacks = ", ".join(_metric(a) for a in plane.attacks)
    ax.set_title(
        f"protocol {plane.protocol} · {plane.dataset}\nrobust: strongest stored of {attacks}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    labels = ax.get_legend_handles_labels()[1]
    ncol = 1 if max(map(len, labels), default=0) > 45 else 2  # long lines side by side overflow
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False, ncol=ncol)


def _pad_limits(ax, plane: Plane) -> None:
    for axis, setter in (("clean", ax.set_xlim), ("robust", ax.set_ylim)):
        values = [getattr(p, axis) for p in plane.points]
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.15, 2.0)
        setter(max(lo - pad, 0.0), min(hi + pad * 1.6, 100.0))


@dataclass
class EnergyPanel:
    title: str  # run and protocol
    values: dict[str, np.ndarray]  # clean / adversarial / generated energies
    result: dict[str, Any]  # the stored energy result (gaps, W1, attack, n)


def _span(arrays) -> tuple[float, float] | None:
    """The 0.5–99.5 % range of the values (widened to 1 when it is empty); None without values."""
    present = [v for v in arrays if v.size]
    if not present:
        return None
    lo, hi = np.percentile(np.concatenate(present), [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 0.5, float(hi) + 0.5)


def _gaps(r: dict[str, Any], outside: int) -> str:
    """The numbers a row prints: the two gaps and W1 distances, and what fell off the axis."""
    lines = [f"gap adv {r['gap_adv']:+.3g}   W1 {r['w1_adv']:.3g}"]
    if r.get("gap_gen") is not None:
        lines.append(f"gap gen {r['gap_gen']:+.3g}   W1 {r['w1_gen']:.3g}")
    else:
        lines.append("generated: none stored")
    if outside:
        lines.append(f"{outside} outside the shared axis (at its edge)")
    return "\n".join(lines)


def energy_panels(panels: list[EnergyPanel], protocol: str):
    """The paper's figure for every run: histograms of E(x) for clean, adversarial and generated
    samples, one row per run on a shared axis, with the two gaps and W1 distances printed. A run
    whose energies span a small part of that axis (another run's lie far away, e.g. a classifier's
    generated samples at E = -400 beside energies near -5) gets an inset on its own range, so its
    three histograms stay readable."""
    plt = _pyplot()
    lo, hi = _span([v for p in panels for v in p.values.values()]) or (0.0, 1.0)
    bins = np.linspace(lo, hi, 61)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8.5, 2.3 * len(panels) + 0.6), sharex=True, squeeze=False
    )
    for ax, panel in zip(axes[:, 0], panels):
        values = {name: v for name, v in panel.values.items() if v.size}
        for name, v in values.items():
            label, color = f"{name} (n={v.size})", ENERGY_COLORS.get(name)
            ax.hist(
                np.clip(v, lo, hi), bins=bins, density=True, alpha=0.45, color=color, label=label
            )
        outside = sum(int(((v < lo) | (v > hi)).sum()) for v in values.values())
        ax.text(0.99, 0.95, _gaps(panel.result, outside), transform=ax.transAxes, **GAPS_TEXT)
        ax.set_title(panel.title, fontsize=9, loc="left")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper left")
        own = _span(panel.values.values())
        if own is not None and (own[1] - own[0]) < ZOOM_BELOW * (hi - lo):
            _zoom_inset(ax, values, own)
    atk = panels[0].result.get("attack") or {}
    steps, eps = int(atk.get("steps", 0)), float(atk.get("eps", 0)) * 255
    attack = f"PGD-{steps} eps {eps:.3g}/255" if atk else "PGD"
    axes[-1, 0].set_xlabel(
        f"energy E(x) = -logsumexp f(x)   (protocol {protocol}; adversarial: {attack})"
    )
    fig.tight_layout()
    return fig


def _zoom_inset(ax, values: dict[str, np.ndarray], own: tuple[float, float]) -> None:
    """The row's histograms again on its own range, in an inset between the legend and the numbers."""
    inset = ax.inset_axes([0.22, 0.14, 0.29, 0.6])
    bins = np.linspace(own[0], own[1], 41)
    for name, v in values.items():
        inset.hist(
            np.clip(v, *own), bins=bins, density=True, alpha=0.45, color=ENERGY_COLORS.get(name)
        )
    inset.set_title("zoom: this run's own range", fontsize=6, pad=2)
    inset.tick_params(labelsize=6, length=2)
    inset.set_yticks([])
    inset.set_gid("energy-zoom")


CURVE_GROUPS = (  # the panels of the training curves in order, by the logged term's name
    lambda k: k in ("loss", "ce", "px", "adv", "align", "kl", "energy_sq", "robust"),  # loss terms
    lambda k: k.startswith("acc"),  # accuracy on the training batch
    lambda k: k.startswith("e_"),  # energies
    lambda k: k == "lr",
)
NOT_CURVES = {"step", "epoch", "images_per_s"}


def curve_keys(histories: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The logged numeric terms, grouped as ``CURVE_GROUPS`` orders them, then any other."""
    keys = dict.fromkeys(
        k
        for hist in histories.values()
        for entry in hist
        for k, v in entry.items()
        if k not in NOT_CURVES and isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    return list(dict.fromkeys([k for match in CURVE_GROUPS for k in keys if match(k)] + list(keys)))


def training_curves(
    histories: dict[str, list[dict[str, Any]]], validations: dict[str, list[dict[str, Any]]]
):
    """Every logged term against the step, one panel per term, a line per run; validation accuracy
    (with its n) in a panel of its own."""
    plt = _pyplot()
    keys = curve_keys(histories)
    has_val = any(validations.values())
    n_panels, cols = len(keys) + int(has_val), 4
    rows = max(1, math.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    flat = list(axes.ravel())
    color = {run: plt.get_cmap("tab10")(i % 10) for i, run in enumerate(histories)}
    for ax, key in zip(flat, keys):
        for run, hist in histories.items():
            pts = [(e["step"], e[key]) for e in hist if isinstance(e.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), lw=1.1, color=color[run], label=run)
        ax.set_title(key, fontsize=9)
    if has_val:
        ax, ns = flat[len(keys)], set()
        for run in histories:
            val = validations.get(run) or []
            if val:
                steps, accs = [v["step"] for v in val], [100 * v["accuracy"] for v in val]
                ax.plot(steps, accs, marker="o", ms=3, color=color[run], label=run)
                ns |= {v.get("n_examples") for v in val}
        n = describe_counts(sorted(n for n in ns if n))
        ax.set_title(f"validation accuracy % (test split, {n})", fontsize=9)
    for ax in flat[n_panels:]:
        ax.axis("off")
    for ax in flat[:n_panels]:
        ax.grid(alpha=0.3)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = flat[0].get_legend_handles_labels()
    if handles:
        ncol = min(4, len(labels))
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if len(labels) <= 4 else 0.1, 1, 1))
    return fig
