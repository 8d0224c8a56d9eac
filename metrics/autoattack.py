"""``autoattack``: robust accuracy under the official AutoAttack (``pyautoattack``, Croce & Hein 2020).

Settings (all recorded with the result):

- ``version``: ``standard`` (APGD-CE, APGD-T, FAB-T, Square 5000; the RobustBench protocol),
  ``rand`` (APGD-CE and APGD-DLR with EOT 20, for randomised defences), ``plus`` or ``custom``
  (then ``attacks``: a list of ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``, ``square``).
- ``eps`` (in the scale of the [0, 1] inputs), ``norm`` (``Linf``, ``L2``, ``L1``), ``n_examples``,
  ``batch_size`` (default: the evaluation batch size), ``seed`` (default: the run seed).
- Component overrides, for reproducing reduced variants with the library's own attacks:
  ``apgd_iter``, ``apgd_restarts``, ``apgd_targeted_iter``, ``fab_iter``, ``fab_restarts``,
  ``square_queries``. Left unset, the version's official values are used.

Inputs are the [0, 1] test images; the model returns logits.

Resuming. The evaluation keeps pyautoattack's own state file (robust flags after every batch,
attacks finished) in ``<run dir>/autoattack/<key>.state.json`` together with a small progress
file. If it is interrupted, running the same evaluation again (same checkpoint, images and
settings, hence the same key) continues from that state: attacks already finished are not run
again, and the attack in progress is rerun only on the points still robust. (pyautoattack 0.2.0
cannot restore its own state file - its resume path returns an unassigned variable - so the
restore is done here: the saved flags select the points that are still robust and the remaining
attacks run on those, again with a state file.) The files are removed once the result exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import torch

from bench.core.io import write_json
from metrics.base import accuracy_headline, accuracy_summary, register_metric, say, test_subset
from metrics.guards import (
    ForwardWatch,
    PerturbationMeter,
    check,
    forward_is_random,
    randomness_check,
    verdict,
)

VERSIONS = ("standard", "rand", "plus", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_AFTER = re.compile(r"robust accuracy after (\S+): ([0-9.]+)%")
_OVERRIDES = (
    "apgd_iter",
    "apgd_restarts",
    "apgd_targeted_iter",
    "fab_iter",
    "fab_restarts",
    "square_queries",
)


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(
            t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            if t.numel()
            else b""
        )
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(
        t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    ).hexdigest()


def build_autoattack(
    model, *, version: str, eps: float, norm: str, attacks, device, seed: int, settings: dict
):
    """The pyautoattack ``AutoAttack`` object for these settings (official components, optional overrides)."""
    from pyautoattack import AutoAttack
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT

    from bench.core.errors import BenchError

    if version not in VERSIONS:
        raise BenchError(
            f"autoattack version {version!r} unknown; choose one of: {', '.join(VERSIONS)}"
        )
    if version == "custom":
        bad = [a for a in attacks or [] if a not in ATTACKS]
        if not attacks or bad:
            raise BenchError(
                f"autoattack version 'custom' needs attacks from {', '.join(ATTACKS)}"
                f"{' (unknown: ' + ', '.join(bad) + ')' if bad else ''}, e.g. --set autoattack.attacks=apgd-ce,square"
            )
    aa = AutoAttack(
        model,
        norm=norm,
        eps=eps,
        version=version,
        attacks=list(attacks) if version == "custom" else None,
        device=device,
        seed=seed,
    )
    if version == "custom":
        # the library's custom defaults are its constructor's (APGD 5 restarts); standard uses 1
        aa.apgd.n_restarts = 1
        aa.fab.n_restarts = 1
    logger = aa.logger
    if settings.get("apgd_iter") is not None or settings.get("apgd_restarts") is not None:
        aa.apgd = APGDAttack(
            model,
            n_iter=int(settings.get("apgd_iter") or 100),
            n_restarts=int(settings.get("apgd_restarts") or aa.apgd.n_restarts),
            eps=eps,
            norm=norm,
            eot_iter=aa.apgd.eot_iter,
            rho=0.75,
            seed=seed,
            device=device,
            logger=logger,
            use_largereps=aa.apgd.use_largereps,
        )
    if settings.get("apgd_targeted_iter") is not None:
        old = aa.apgd_targeted
        aa.apgd_targeted = APGDAttack_targeted(
            model,
            n_iter=int(settings["apgd_targeted_iter"]),
            n_restarts=old.n_restarts,
            eps=eps,
            norm=norm,
            eot_iter=1,
            rho=0.75,
            seed=seed,
            device=device,
            logger=logger,
            use_largereps=old.use_largereps,
        )
        aa.apgd_targeted.n_target_classes = old.n_target_classes
    if settings.get("fab_iter") is not None or settings.get("fab_restarts") is not None:
        old = aa.fab
        aa.fab = FABAttack_PT(
            model,
            n_restarts=int(settings.get("fab_restarts") or old.n_restarts),
            n_iter=int(settings.get("fab_iter") or 100),
            eps=eps,
            seed=seed,
            norm=norm,
            verbose=False,
            device=device,
        )
        aa.fab.n_target_classes = old.n_target_classes
    if settings.get("square_queries") is not None:
        aa.square.n_queries = int(settings["square_queries"])
    return aa


class _Recorder(logging.Handler):
    """Collects what pyautoattack logs: the robust count after each attack (read from its state file)."""

    def __init__(self, state_path: Path, seg_n: int, on_attack):
        super().__init__(level=logging.DEBUG)
        self.state_path, self.seg_n, self.on_attack = state_path, seg_n, on_attack
        self.messages: list[str] = []
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a malformed log call must not break the attack
            return
        self.messages.append(msg)
        if record.levelno >= logging.WARNING and msg not in self.warnings:
            self.warnings.append(msg)  # the library's checks (randomised or non-logit outputs, ...)
        m = _AFTER.search(msg)
        if not m:
            return
        attack = m.group(1).lower()
        count = None
        try:  # the flags were force-saved after the attack's last batch: an exact count
            with open(self.state_path) as fh:
                flags = json.load(fh).get("_robust_flags")
            if flags is not None and len(flags) == self.seg_n:
                count = int(sum(bool(f) for f in flags))
        except (OSError, ValueError):
            pass
        if count is None:
            count = round(float(m.group(2)) / 100 * self.seg_n)
        self.on_attack(attack, count)


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
        "version": str,
        "norm": str,
        "eps": float,
        "attacks": list[str],
        "seed": int,
        "batch_size": int,
        "apgd_iter": int,
        "apgd_restarts": int,
        "apgd_targeted_iter": int,
        "fab_iter": int,
        "fab_restarts": int,
        "square_queries": int,
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
        **{k: settings.get(k) for k in _OVERRIDES},
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

        rec = _Recorder(state_path, seg.numel(), on_attack)
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
        "library": f"pyautoattack {_version()}",
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


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("pyautoattack")
    except Exception:  # pragma: no cover
        return "?"
