"""Which weights a stored result measured: each result's ``checkpoint`` (step, file, sha256 of the
weights) and whether it is of the run's evaluated weights; docs/evaluation.md (Guardrails)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def weights_digest(model: torch.nn.Module) -> str:
    """The sha256 of ``model``'s weights (names, shapes and bytes, in name order): which weights a
    result is of, whatever file they came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_note(record: dict, res: dict) -> str | None:
    """Why ``res`` is not a result of ``record``'s own evaluated weights (its final checkpoint, or
    best.pt when its evaluation takes the best), or None when it is or cannot say (results stored
    before they named their checkpoint)."""
    ckpt, own = res.get("checkpoint"), record.get("evaluated_checkpoint") or {}
    if not isinstance(ckpt, dict) or ckpt.get("step") is None:
        return None
    final = own.get("step", (record.get("training") or {}).get("steps_done"))
    if final is None or ckpt["step"] == final:
        return None
    return f"of step {ckpt['step']} ({ckpt.get('file')}), not of the weights the run reports (step {final})"


def of_weights(res: Any, digest: str) -> bool:
    """Whether ``res`` is a result of the weights with ``digest`` (or of unnamed weights: stored
    before results named their checkpoint)."""
    ckpt = res.get("checkpoint") if isinstance(res, dict) else None
    return not isinstance(ckpt, dict) or ckpt.get("sha256") == digest
