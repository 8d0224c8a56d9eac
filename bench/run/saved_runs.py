"""A saved run's trained model and replay buffer, loaded back from its directory, and samples drawn from it."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.core.record_reading import run_config
from bench.core.records import RunRecord
from bench.core.run_dirs import resolve_run
from bench.data import load_run_data
from bench.models import build_model
from bench.sampling.generate import make_sample_fn
from bench.sampling.images import save_grid, save_npz
from bench.sampling.kinds import SAMPLERS
from bench.train import checkpoint


def load_run_model(
    run_dir: Path, device: torch.device | None = None, checkpoint_path: str | None = None
):
    """(model, cfg, data, record) of a saved run.

    Weights from ``checkpoint_path``, else the run's ``eval.checkpoint`` choice: ``best.pt`` (best
    validation accuracy) when it is ``best`` and that file exists, otherwise ``last.pt``.
    """
    record = RunRecord.load(run_dir).data
    cfg = run_config(record)
    dev = device or resolve_device(cfg.device)
    data = load_run_data(cfg)
    model = build_model(cfg.model, data.num_classes).to(dev)
    # the digest recorded at training time: new config fields added since then change cfg.digest()
    best = run_dir / "checkpoints" / "best.pt"
    if checkpoint_path:
        path = Path(checkpoint_path)
    elif cfg.eval.checkpoint == "best" and best.is_file():
        path = best
    else:
        path = run_dir / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(path, expect_digest=record.get("config_digest") or cfg.digest())
    # a run with train.ema_decay reports its averaged weights (best.pt already holds them as model)
    checkpoint.load_weights(model, ckpt.get("ema_model") or ckpt["model"], path)
    inside = path.resolve().is_relative_to(Path(run_dir).resolve())
    file = path.resolve().relative_to(Path(run_dir).resolve()) if inside else path
    model.loaded_from = {"step": ckpt.get("step"), "file": str(file)}  # what its results are of
    model.eval()
    return model, cfg, data, record


def buffer_state(run_dir: Path, checkpoint_path: str | None, strict: bool = False):
    """The replay buffer saved with a JEM-family run's checkpoint (None for other runs, and for an
    unreadable checkpoint unless ``strict``)."""
    path = Path(checkpoint_path) if checkpoint_path else Path(run_dir) / "checkpoints" / "last.pt"
    try:
        ckpt = checkpoint.load(path)
    except BenchError:
        if strict:
            raise
        return None
    return saved_buffer(ckpt.get("method"))


def saved_buffer(method_state: dict | None) -> dict | None:
    """The replay-buffer state within a method's state (``Method.state_dict()``, as a checkpoint
    holds it); None for a method without one."""
    buf = ((method_state or {}).get("sampler") or {}).get("buffer")
    return buf if isinstance(buf, dict) and "x" in buf else None


GRID_MAX = 256  # images shown in the PNG grid (the npz holds all of them)


def _parse_class(value: str | None, classes: list[str]) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < len(classes):
            raise BenchError(
                f"--class {k} is out of range; this run's dataset has classes 0..{len(classes) - 1}"
            )
        return k
    if value in classes:
        return classes.index(value)
    raise BenchError(
        f"--class {value!r} is neither a class index nor a class name ({', '.join(classes[:10])}"
        f"{', ...' if len(classes) > 10 else ''})"
    )


def sample_run(
    run_ref: str,
    *,
    n: int = 64,
    klass: str | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    buffer: str = "fresh",
    npz_out: str | None = None,
    grid: str | None = None,
    results: str = "results",
    checkpoint_path: str | None = None,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 256,
    show_progress: bool = False,
) -> dict:
    """Library entry point of `bench sample`; returns what it wrote and the energy statistics."""
    if n < 1:
        raise BenchError(f"-n must be a positive number of images, got {n}")
    if steps is not None and steps < 0:
        raise BenchError(f"--steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise BenchError(f"--batch-size must be positive, got {batch_size}")
    if npz_out is not None and not npz_out.endswith(".npz"):
        raise BenchError(f"--npz {npz_out!r} must name an .npz file, e.g. --npz samples.npz")
    if sampler is not None and sampler not in SAMPLERS:
        raise BenchError(
            f"--sampler {sampler!r} is not a sampler kind; choose one of: {', '.join(SAMPLERS.names())}"
        )
    if buffer not in ("fresh", "saved"):
        raise BenchError(f"--buffer {buffer!r} is not valid; choose fresh or saved")
    run_dir = resolve_run(run_ref, results)
    dev = resolve_device(device) if device else None
    model, cfg, data, record = load_run_model(run_dir, dev, checkpoint_path)
    dev = next(model.parameters()).device
    k = _parse_class(klass, data.classes)
    saved = None
    if buffer == "saved":
        saved = buffer_state(run_dir, checkpoint_path, strict=True)
        if saved is None:
            raise BenchError(
                f"run {record['run_id']} ({record['method']}) saved no replay buffer; use --buffer fresh"
            )
    torch.manual_seed(seed)
    fn = make_sample_fn(
        model,
        cfg,
        dev,
        steps=steps,
        sampler=sampler,
        buffer_state=saved,
        data=data,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    x = fn(n, y=k)
    stats = dict(fn.stats)
    tag = (
        f"{buffer}-{fn.sampler.kind}-{fn.steps}steps"
        + (f"-class{k}" if k is not None else "")
        + f"-seed{seed}"
    )
    grid_path = Path(grid) if grid else run_dir / "samples" / f"sample-{tag}.png"
    if grid_path.suffix.lower() != ".png":
        raise BenchError(f"--grid {str(grid_path)!r} must name a .png file")
    try:
        save_grid(x[:GRID_MAX], grid_path)
        if npz_out is not None:
            y = torch.full((n,), k, dtype=torch.long) if k is not None else None
            save_npz(
                npz_out,
                x,
                y,
                run_id=record["run_id"],
                sampler=fn.sampler.kind,
                steps=fn.steps,
                start=buffer,
            )
    except OSError as exc:
        raise BenchError(
            f"cannot write the samples ({exc.strerror}: {exc.filename}); pass writable --grid/--out paths"
        )
    stats.update(grid=str(grid_path), npz=npz_out, run_id=record["run_id"], cls=k, start=buffer)
    return stats
