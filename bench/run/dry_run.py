"""`bench run --dry-run`: the resolved run (each value and where it came from) and the plan.

Nothing is written and nothing is trained. The data is loaded when it can be (it is needed for
the number of steps); a dataset that is missing is reported in one line instead of the steps.
"""

from __future__ import annotations

import json
from typing import Any

from bench.core.config import RunConfig
from bench.core.errors import BenchError
from bench.core.settings import flatten
from bench.run.resolve import Resolved


def plan(cfg: RunConfig) -> dict[str, Any]:
    """Training images, batch, steps per epoch and total steps of ``cfg`` (needs its data)."""
    from bench.data import load_run_data
    from bench.data.stream import check_batch_fits
    from bench.train.trainer import total_steps
    from methods import get_method

    data = load_run_data(cfg)
    spec = get_method(cfg.method).from_dict(cfg.method_cfg).batch_specs()[0]
    batch = spec.batch_size or cfg.data.batch_size
    check_batch_fits(batch, 1, data.x_train.shape[0], spec.batch_size_setting)
    # full batches only, as the trainer's stream draws them
    per_epoch = data.x_train.shape[0] // batch
    total = total_steps(cfg.train, per_epoch)
    return {
        "train_images": int(data.x_train.shape[0]),
        "batch": batch,
        "steps_per_epoch": per_epoch,
        "total_steps": total,
        "epochs": round(total / per_epoch, 3),
    }


def describe(run: Resolved) -> list[str]:
    """The lines `bench run --dry-run` prints: the run as :func:`bench.run.resolve.resolve` gave it."""
    cfg, src = run.config, run.sources
    lines = [
        f"dry run: {cfg.method} on {cfg.data.dataset} ({cfg.model.arch}, preset {cfg.preset}, seed {cfg.seed}); "
        "nothing is written",
        "",
    ]
    rows = [
        (k, json.dumps(v) if not isinstance(v, str) else v, src.get(k, "default"))
        for k, v in flatten(cfg.to_dict()).items()
    ]
    width = max(len(k) + len(v) for k, v, _ in rows) + 3
    lines += [f"{k} = {v}".ljust(width) + f"[{s}]" for k, v, s in rows]
    lines.append("")
    try:
        p = plan(cfg)
        lines.append(
            f"plan: {p['total_steps']} steps ({p['epochs']:g} epochs of {p['steps_per_epoch']} steps: "
            f"{p['train_images']} training images, batch {p['batch']}); evaluation: "
            + (
                f"protocol {cfg.eval.protocol} on {cfg.eval.n_examples} test images"
                if cfg.eval.enabled
                else "off"
            )
        )
    except BenchError as exc:
        lines.append(f"plan: steps unknown: {exc}")
    return lines
