"""The rest of `bench perf` (README.md, BENCHMARKS.md): the sampler of each energy-based method as
its training step runs it, torch-fidelity's InceptionV3 feature extraction (skipped without the
weights of `bench fid-weights`), and the `autoattack` metric on trained runs (`--aa-run`). AutoAttack
attacks only correctly classified points, and each attack of the cascade only the points still
robust, so a robust model costs several times more per image than a non-robust one: pass one of
each."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from bench.tools.flops import FlopCount, forward_flops_per_image, sync


def time_sampler(trainer, model, method, *, reps: int, warmup: int = 1) -> dict[str, Any] | None:
    """Throughput of ``method.sampler.draw`` under ``trainer``'s precision and memory format, at the
    draw size of the training steps just run."""
    from bench.sampling.sampler import ContrastiveSampler

    sampler = getattr(method, "sampler", None)
    if not isinstance(sampler, ContrastiveSampler):
        return None
    device = trainer.device
    # as many as a training step draws
    batch = sampler.last_batch_size or trainer.cfg.data.batch_size
    fwd = forward_flops_per_image(model, tuple(trainer.data.image_shape), device)
    # a class-conditional sampler draws x | y: labels as the training step draws them (uniform)
    y = (
        torch.randint(0, trainer.data.num_classes, (batch,), device=device)
        if sampler.cfg.conditional
        else None
    )
    model.train()
    with trainer.autocast():
        for _ in range(warmup):
            sampler.draw(model, batch, y=y)
        with FlopCount() as fc:
            sampler.draw(model, batch, y=y)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            sampler.draw(model, batch, y=y)
        sync(device)
        dt = (time.perf_counter() - t0) / reps
    c = sampler.cfg
    steps = f"{c.steps}x{c.in_steps}" if c.kind == "pyld" else str(c.steps)
    return {
        "kind": c.kind,
        "steps": steps,
        "batch_size": batch,
        "ms_per_draw": 1e3 * dt,
        "images_per_s": batch / dt,
        "fe_per_image": fc.total / (fwd * batch) if fwd else 0.0,
    }


def time_fid_features(
    device: torch.device, *, n_images: int = 512, batch_size: int = 64, weights: str | None = None
) -> dict[str, Any]:
    """Images/s of the InceptionV3 feature extractor FID uses; ``{"skipped": why}`` without weights."""
    from metrics.base import MetricUnavailable
    from metrics.inception import INCEPTION, resolve_weights

    try:
        path, source = resolve_weights(
            {"weights": weights, "download": False}, SimpleNamespace(weights=None), download=False
        )
    except MetricUnavailable as exc:
        return {"skipped": str(exc)}
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = FeatureExtractorInceptionV3(
        INCEPTION, ["2048"], feature_extractor_weights_path=path
    )
    extractor = extractor.to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    batches = max(1, n_images // batch_size)
    with torch.no_grad():
        extractor(x)  # warm-up (cudnn autotuning, lazy init)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            feats = extractor(x)[0]
        sync(device)
        dt = time.perf_counter() - t0
    if feats.shape != (batch_size, 2048):
        raise RuntimeError(f"unexpected InceptionV3 feature shape {tuple(feats.shape)}")
    return {
        "extractor": INCEPTION,
        "weights_source": source,
        "batch_size": batch_size,
        "n_images": batches * batch_size,
        "images_per_s": batches * batch_size / dt,
        "precision": "fp32",
        "input": "uint8 32x32, resized to 299 inside the extractor",
    }


def time_autoattack(
    run_ref: str,
    out: str | Path,
    device: torch.device,
    *,
    n_examples: int,
    version: str = "standard",
    batch_size: int = 500,
) -> dict[str, Any]:
    """The `autoattack` metric on a trained run's first ``n_examples`` test images, timed."""
    from bench.core.device import evaluation_precision, precision
    from bench.core.run_dirs import resolve_run
    from bench.run.evaluation import load_evaluation_model
    from metrics.autoattack import autoattack
    from metrics.base import EvalContext

    run_dir = resolve_run(run_ref, out)
    # the model `bench eval` attacks
    model, cfg, data, record = load_evaluation_model(run_dir, device)
    with tempfile.TemporaryDirectory() as tmp, precision(evaluation_precision(cfg.eval.tf32)):
        ctx = EvalContext(
            device=device,
            batch_size=batch_size,
            seed=cfg.seed,
            out_dir=Path(tmp),
            show_progress=False,
        )
        t0 = time.perf_counter()
        res = autoattack(model, data, {"version": version, "n_examples": n_examples}, ctx)
        wall = time.perf_counter() - t0
    return {
        "run": record["run_id"],
        "method": cfg.method,
        "arch": cfg.model.arch,
        "version": version,
        "n_examples": res["n_examples"],
        "clean_accuracy": res["clean_accuracy"],
        "robust_accuracy": res["accuracy"],
        "per_attack": res["per_attack"],
        "seconds": wall,
        "images_per_s": res["n_examples"] / wall,
        "library": res["library"],
    }


def time_guardrails(
    run_ref: str,
    out: str | Path,
    device: torch.device,
    *,
    n_examples: int,
    steps: int = 20,
    batch_size: int = 250,
    reps: int = 2,
) -> dict[str, Any]:
    """What the guardrail checks add to an evaluation: the `pgd` metric (PGD-``steps`` with its
    checks) against the same attack loop without them, on a trained run's test images. The two
    are timed alternately, ``reps`` times each, and the faster time of each is compared."""
    from bench.attacks.pgd import pgd_linf
    from bench.core.device import evaluation_precision, precision
    from bench.core.run_dirs import resolve_run
    from bench.run.evaluation import load_evaluation_model
    from metrics.base import EvalContext, batches, test_subset
    from metrics.pgd import pgd

    run_dir = resolve_run(run_ref, out)
    # the model `bench eval` attacks
    model, cfg, data, record = load_evaluation_model(run_dir, device)
    settings = {
        "eps": 8 / 255,
        "alpha": 2 / 255,
        "steps": steps,
        "restarts": 1,
        "n_examples": n_examples,
    }
    x, y = test_subset(data, n_examples)

    def bare() -> None:
        torch.manual_seed(cfg.seed)
        for xb, yb in batches(x, y, batch_size, device):
            with torch.no_grad():
                int((model(xb).argmax(1) == yb).sum())
            x_adv = pgd_linf(
                model, xb, yb, eps=settings["eps"], alpha=settings["alpha"], steps=steps
            )
            with torch.no_grad():
                int((model(x_adv).argmax(1) == yb).sum())

    def checked() -> None:
        ctx = EvalContext(device=device, batch_size=batch_size, seed=cfg.seed, show_progress=False)
        pgd(model, data, settings, ctx)

    times: dict[str, list[float]] = {"bare": [], "checked": []}
    with precision(evaluation_precision(cfg.eval.tf32)):  # the flags `bench eval` runs under
        for _ in range(reps):
            for name, fn in (("bare", bare), ("checked", checked)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    b, c = min(times["bare"]), min(times["checked"])
    return {
        "run": record["run_id"],
        "method": cfg.method,
        "n_examples": int(x.shape[0]),
        "steps": steps,
        "seconds_bare": b,
        "seconds_checked": c,
        "overhead": c / b - 1,
    }
