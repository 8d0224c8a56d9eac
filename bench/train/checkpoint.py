"""Checkpoints: everything a run needs to continue exactly where it stopped, read with
``torch.load(weights_only=True)`` so nothing in a file runs (docs/reliability.md). ``last.pt`` is
always the newest *good* checkpoint (written atomically, after the divergence guard passed).
"""

from __future__ import annotations

import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.core.io import torch_save
from bench.train import distributed as D
from bench.train.hooks import Hook, call

FORMAT = 2  # 2: the numpy RNG state stored as a tensor and plain values (1: as a numpy array)
READABLE = (1, 2)
# what format-1 checkpoints need besides tensors and plain values: numpy's array reconstruction
_MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / 1
_NUMPY_RNG_GLOBALS = [_MULTIARRAY._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> str | None:
    """Restore the RNG states of ``st``; returns a line naming what could not be restored, or None.

    The CUDA states are one per GPU the writing process saw: a host that sees fewer GPUs (or none)
    gets the first ones and a note about the rest. Nothing the run computes depends on them: every
    training step seeds all generators again (``bench.train.settings.step_seed``)."""
    torch.set_rng_state(st["torch"])
    nps = st["numpy"]
    if isinstance(nps, dict):
        nps = (
            nps["name"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    np.random.set_state(nps)
    random.setstate(st["python"])
    return restore_cuda_rng(
        list(st.get("cuda") or []), torch.cuda.device_count() if torch.cuda.is_available() else 0
    )


def restore_cuda_rng(states: list[torch.Tensor], visible: int) -> str | None:
    """Give GPU ``i`` saved state ``i`` for each of the ``visible`` GPUs that has one; a line
    naming the states left unrestored (``torch.cuda.set_rng_state_all`` would fail on them)."""
    for i, state in enumerate(states[:visible]):
        torch.cuda.set_rng_state(state, i)
    if len(states) <= visible:
        return None
    gpus = f"GPU {visible}" if len(states) == visible + 1 else f"GPUs {visible}-{len(states) - 1}"
    return (
        f"the CUDA RNG state of {gpus} was not restored (the checkpoint holds {len(states)}, this host sees "
        f"{visible} GPU{'' if visible == 1 else 's'}); every training step reseeds the generators, so "
        "training does not depend on it"
    )


def save(path: Path, payload: dict[str, Any]) -> None:
    torch_save({"format": FORMAT, **payload, "rng": rng_state()}, path)


def load(path: Path, expect_digest: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BenchError(
            f"checkpoint {path} is missing; the run cannot be resumed (start a new run)"
        )
    try:
        with torch.serialization.safe_globals(_NUMPY_RNG_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # torch names the Python object it refused to unpickle
            raise BenchError(
                f"checkpoint {path} is not a trilemma-bench checkpoint: it holds Python objects "
                "other than tensors and plain values, and is not unpickled; use a checkpoint this "
                "tool wrote"
            )
        raise _corrupt(path, exc)
    except Exception as exc:
        raise _corrupt(path, exc)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE or "model" not in ckpt:
        raise BenchError(f"checkpoint {path} is not a trilemma-bench checkpoint (format {FORMAT})")
    if expect_digest is not None and ckpt.get("config_digest") != expect_digest:
        raise BenchError(
            f"checkpoint {path} belongs to a different configuration ({ckpt.get('config_digest')} != "
            f"{expect_digest}); resume it with the run it came from"
        )
    return ckpt


def load_weights(model: torch.nn.Module, state: Any, path: Path) -> None:
    """Put a checkpoint's weights into ``model``, or say in one line how they do not fit it."""
    own = model.state_dict()
    if not isinstance(state, dict):
        raise BenchError(
            f"checkpoint {path} holds no model weights; use a checkpoint this run wrote"
        )
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own]
    wrong = [
        (k, tuple(getattr(state[k], "shape", ())), tuple(v.shape))
        for k, v in own.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
    ]
    parts = []
    if wrong:
        k, got, want = wrong[0]
        parts.append(
            f"{k} has shape {list(got)} in the file but {list(want)} in the model"
            + (f" ({len(wrong) - 1} more differ)" if len(wrong) > 1 else "")
        )
    if missing:
        parts.append(f"{len(missing)} weight(s) missing, e.g. {missing[0]}")
    if unknown:
        parts.append(f"{len(unknown)} weight(s) the model does not have, e.g. {unknown[0]}")
    if not parts:
        try:
            model.load_state_dict(state)
            return
        except (RuntimeError, TypeError, ValueError) as exc:
            parts.append(" ".join(str(exc).split())[:160])
    raise BenchError(
        f"checkpoint {path} does not fit the run's model: {'; '.join(parts)}; use a checkpoint "
        "written by this run"
    )


def _corrupt(path: Path, exc: Exception) -> BenchError:
    return BenchError(
        f"checkpoint {path} is corrupt ({type(exc).__name__}); resume from an earlier one with "
        f"--checkpoint {path.parent}/step-*.pt or start a new run"
    )


def prune(ckpt_dir: Path, keep: int) -> None:
    periodic = sorted(Path(ckpt_dir).glob("step-*.pt"))
    for p in periodic[: max(0, len(periodic) - keep)]:
        p.unlink(missing_ok=True)


class Checkpoints(Hook):
    """The trainer's checkpoints: ``last.pt`` (model, optimiser, every rank's method state, the
    training state, what the hooks add, RNG), its periodic ``step-*.pt`` copies, and ``best.pt``
    (the weights with the highest validation accuracy so far)."""

    def on_fit_start(self, tr) -> None:
        if not (tr.ckpt_dir / "last.pt").is_file():
            self.save(tr, periodic=False)  # a good state to fall back to from step 0

    def on_checkpoint(self, tr, periodic: bool) -> None:
        self.save(tr, periodic)

    def on_validation(self, tr, result: dict[str, Any]) -> None:
        if result["split"] == "val" and result["accuracy"] > tr.state.best.get("accuracy", -1.0):
            self.save_best(tr, result)

    def save(self, tr, periodic: bool = True) -> Path:
        last = tr.ckpt_dir / "last.pt"
        method_states = D.gather_objects(tr.method.state_dict(), tr.dist)  # every rank's, on rank 0
        if tr.dist.is_main:
            payload = {
                "step": tr.state.step,
                "config_digest": tr.config_digest,
                "world_size": tr.dist.world,
                "model": tr.model.state_dict(),
                "optimizer": tr.optimizer.state_dict(),
                "method": method_states[0],
                "method_per_rank": method_states if tr.dist.enabled else None,
                "state": dict(vars(tr.state)),
            }
            for hook in tr.hooks:
                hook.save_into(payload)
            save(last, payload)
            keep = tr.cfg.train.keep_checkpoints
            if periodic and keep > 0:
                save(tr.ckpt_dir / f"step-{tr.state.step:08d}.pt", payload)
                prune(tr.ckpt_dir, keep)
            tr.method.on_checkpoint(tr.run_dir, tr.state.step)
        D.barrier(tr.dist)  # the file is complete before any rank may read it
        return last

    def save_best(self, tr, validation: dict[str, Any]) -> None:
        tr.state.best = {
            "step": tr.state.step,
            "accuracy": validation["accuracy"],
            "n_examples": validation["n_examples"],
            "checkpoint": "checkpoints/best.pt",
        }
        # the weights that were validated: the average, with EMA on
        weights = tr.ema.state_dict() if tr.ema is not None else tr.model.state_dict()
        step, digest = tr.state.step, tr.config_digest
        payload = {"step": step, "config_digest": digest, "model": weights, "best": tr.state.best}
        save(tr.ckpt_dir / "best.pt", payload)

    def load(self, tr, path: Path) -> None:
        ckpt = load(path, expect_digest=tr.config_digest)
        load_weights(tr.model, ckpt["model"], path)
        try:
            tr.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(
                f"checkpoint {path} holds an optimiser state that does not fit this run's optimiser "
                f"({' '.join(str(exc).split())[:120]}); use a checkpoint written by this run"
            )
        saved_world = ckpt.get("world_size", 1)
        if saved_world != tr.dist.world:
            raise BenchError(
                f"checkpoint {path} was written by {saved_world} process(es); resume it with "
                f"--nproc {saved_world} (this run has {tr.dist.world})"
            )
        call(tr.hooks, "load_from", tr, ckpt, path)
        per_rank = ckpt.get("method_per_rank")
        tr.method.load_state_dict(per_rank[tr.dist.rank] if per_rank else ckpt.get("method", {}))
        saved, fields = ckpt["state"], vars(type(tr.state)())
        tr.state = type(tr.state)(**{k: saved[k] for k in fields if k in saved})
        not_restored = set_rng_state(ckpt["rng"])
        if not_restored and tr.dist.is_main:
            print(f"resume from {path.name}: {not_restored}", file=sys.stderr)
