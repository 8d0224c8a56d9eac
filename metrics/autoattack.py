"""``autoattack``: robust accuracy under the official AutoAttack (``pyautoattack``, Croce & Hein 2020).
Resumable after an interruption, from its state in the run directory. Settings and how resuming
works: docs/evaluation.md; the library's objects: metrics/autoattack_library.py."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch

from bench.core.io import write_json
from metrics.autoattack_library import (
    ATTACKS,
    OVERRIDES,
    VERSIONS,
    Recorder,
    build_autoattack,
    library_version,
    model_digest,
    tensor_digest,
)
from metrics.base import (
    SEED,
    Setting,
    accuracy_headline,
    accuracy_summary,
    register_metric,
    say,
    test_subset,
)
from metrics.guards import (
    ForwardWatch,
    PerturbationMeter,
    check,
    forward_is_random,
    randomness_check,
    verdict,
)


def summary(res: dict) -> str:
    """Robust accuracy, with each attack's accuracy after it, and n."""
    text = accuracy_summary(res)
    if res.get("per_attack"):
        per = ", ".join(f"{a} {100 * v:.2f}%" for a, v in res["per_attack"].items())
        text = text.replace("%  n=", f"% ({per})  n=", 1)
    return text


@register_metric(
    "autoattack",
    headlines=(accuracy_headline("autoattack"),),
    order=30,
    summary=summary,
    settings={
        "version": Setting(str, choices=VERSIONS),
        "norm": Setting(str, choices=("Linf", "L2", "L1")),
        "eps": Setting(float, 0, open_low=True, unit="pixel units in the norm"),
        "attacks": Setting(list[str], choices=ATTACKS),
        "seed": SEED,
        "batch_size": Setting(int, 1),
        "apgd_iter": Setting(int, 1),
        "apgd_restarts": Setting(int, 1),
        "apgd_targeted_iter": Setting(int, 1),
        "fab_iter": Setting(int, 1),
        "fab_restarts": Setting(int, 1),
        "square_queries": Setting(int, 1),
    },
    checked=True,
)
def autoattack(model, data, settings, ctx) -> dict:
    from pyautoattack.state import EvaluationState

    version = settings.get("version", "standard")
    norm = settings.get("norm", "Linf")
    eps = float(settings.get("eps", 8 / 255))
    attacks = settings.get("attacks")
    if isinstance(attacks, str):
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    seed = int(settings.get("seed", ctx.seed))
    bs = int(settings.get("batch_size") or ctx.batch_size)
    x, y = test_subset(data, settings.get("n_examples", 0))
    x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
    n = x.shape[0]
    device = ctx.device

    aa = build_autoattack(
        model,
        version=version,
        eps=eps,
        norm=norm,
        attacks=attacks,
        device=device,
        seed=seed,
        settings=settings,
    )
    order = list(aa.attacks_to_run)

    key_src = {
        "version": version,
        "attacks": order,
        "eps": eps,
        "norm": norm,
        "seed": seed,
        "n": n,
        **{k: settings.get(k) for k in OVERRIDES},
        "model": model_digest(model),
        "x": tensor_digest(x),
        "y": tensor_digest(y),
    }
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(ctx.out_dir or ".") / "autoattack"
    root.mkdir(parents=True, exist_ok=True)
    state_path = root / f"{key}.state.json"
    progress_path = root / f"{key}.progress.json"

    prog = {
        "key": key,
        "settings": {k: v for k, v in key_src.items() if k not in ("model", "x", "y")},
        "robust": None,
        "done": [],
        "per_attack": {},
        "clean": None,
        "segment": None,
        "segments": 0,
        "seconds": 0.0,
    }
    resumed = False
    if progress_path.exists():
        with open(progress_path) as fh:
            prog = json.load(fh)
        resumed = True
    robust = torch.tensor(prog["robust"], dtype=torch.bool) if prog["robust"] is not None else None
    if state_path.exists():
        # an interrupted segment: fold its saved flags and finished attacks into the progress
        st = EvaluationState.from_disk(state_path)
        seg = (
            torch.tensor(prog["segment"], dtype=torch.long)
            if prog["segment"] is not None
            else torch.arange(n)
        )
        if st.robust_flags is not None and st.robust_flags.numel() == seg.numel():
            if robust is None:
                robust = torch.ones(n, dtype=torch.bool)
            robust[seg] = robust[seg] & st.robust_flags.cpu()
            if prog["clean"] is None and st.clean_accuracy == st.clean_accuracy:  # not NaN
                prog["clean"] = round(st.clean_accuracy * seg.numel())
        prog["done"] = [a for a in order if a in set(prog["done"]) | set(st.run_attacks)]
        state_path.unlink()
        resumed = True
    remaining = [a for a in order if a not in prog["done"]]

    def save_progress() -> None:
        prog["robust"] = robust.tolist() if robust is not None else None
        write_json(progress_path, prog)

    t0 = time.perf_counter()
    warnings: list[str] = []
    eot = (
        int(getattr(aa.apgd, "eot_iter", 1) or 1) if any(a.startswith("apgd") for a in order) else 1
    )
    random, diff = forward_is_random(model, x[: min(n, 64)].to(device))
    watch, meter = ForwardWatch(model), PerturbationMeter()
    if remaining and (robust is None or bool(robust.any())):
        seg = torch.arange(n) if robust is None else torch.nonzero(robust).view(-1)
        prog["segment"] = seg.tolist()
        prog["segments"] += 1
        save_progress()
        aa.attacks_to_run = remaining

        def on_attack(attack: str, count: int) -> None:
            # segment = every point still robust, so this is global
            prog["per_attack"][attack] = count
            if attack not in prog["done"]:
                prog["done"].append(attack)
            write_json(progress_path, {**prog, "robust": prog["robust"]})
            say(
                ctx,
                f"autoattack: after {attack}: {count}/{n} robust ({100 * count / max(n, 1):.1f}%), "
                f"{time.perf_counter() - t0:.0f} s",
            )

        say(
            ctx,
            f"autoattack: {', '.join(remaining)} on {seg.numel()} of {n} points"
            + (" (resumed)" if prog["segments"] > 1 or prog["done"] else ""),
        )

        rec = Recorder(state_path, seg.numel(), on_attack)
        logger = logging.getLogger("auto-attack")
        old_level, old_prop = logger.level, logger.propagate
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(rec)
        was_training = model.training
        model.eval()
        try:
            with watch:
                x_adv, y_adv = aa.run_standard_evaluation(
                    x[seg], y[seg], batch_size=bs, state_path=state_path
                )
            meter.add(x[seg].to(x_adv.device), x_adv)
        finally:
            logger.removeHandler(rec)
            logger.setLevel(old_level)
            logger.propagate = old_prop
            model.train(was_training)
            prog["seconds"] = round(prog.get("seconds", 0.0) + time.perf_counter() - t0, 3)
            if state_path.exists():
                save_progress()
        warnings = rec.warnings
        seg_robust = y_adv.cpu() == y[seg].cpu()
        if robust is None:
            robust = seg_robust.clone()
        else:
            robust[seg] = robust[seg] & seg_robust
        if prog["clean"] is None and seg.numel() == n and state_path.exists():
            clean_acc = EvaluationState.from_disk(
                state_path
            ).clean_accuracy  # exact fraction of this segment
            if clean_acc == clean_acc:
                prog["clean"] = round(clean_acc * n)
        prog["done"] = list(order)
    elif robust is None:
        robust = torch.zeros(n, dtype=torch.bool)

    n_robust = int(robust.sum())
    per_attack = {}
    last = prog["clean"]
    for a in order:  # robust accuracy after each attack of the cascade (the library's own report)
        if a in prog["per_attack"]:
            last = prog["per_attack"][a]
        if last is not None:
            per_attack[a] = last / n
    out = {
        "accuracy": n_robust / n,
        "clean_accuracy": (prog["clean"] / n) if prog["clean"] is not None else None,
        "n_examples": n,
        "n_robust": n_robust,
        "per_attack": per_attack,
        "attacks": order,
        "version": version,
        "eps": eps,
        "norm": norm,
        "seed": seed,
        "resumed": resumed,
        "attack_seconds": round(prog.get("seconds", 0.0), 3),
        "library": f"pyautoattack {library_version()}",
    }
    if warnings:
        out["library_warnings"] = warnings
    for p in (state_path, progress_path):
        if p.exists():
            p.unlink()
    checks = {
        "randomness": randomness_check(random, diff, eot),
        "library": check(
            not warnings,
            "; ".join(warnings) if warnings else "pyautoattack's own checks raised no warning",
        ),
    }
    if (
        watch.calls
    ):  # attacks ran in this call (not all restored from an interrupted evaluation's state)
        checks["forward"] = watch.result()
        if norm == "Linf":  # the meter measures l-inf distances
            checks["perturbation"] = meter.result(eps)
    out["eot"] = eot
    return verdict(out, checks)
