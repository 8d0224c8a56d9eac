"""The pyautoattack side of the ``autoattack`` metric (metrics/autoattack.py): its ``AutoAttack``
built for the metric's settings with the library's own components, what it logs, and the digests
that key a resumable evaluation. See docs/evaluation.md."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import torch

from bench.core.errors import BenchError

VERSIONS = ("standard", "rand", "plus", "custom")
ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_AFTER = re.compile(r"robust accuracy after (\S+): ([0-9.]+)%")
OVERRIDES = (
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


class Recorder(logging.Handler):
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


def library_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyautoattack")
    except Exception:  # pragma: no cover
        return "?"
