"""The images the generation metrics read: generated samples (``--samples FILE.npz``, the run's
saved replay buffer or fresh chains of its sampler; drawn once per evaluation), the most confident
of them per class (the EB-JDAT authors' selection), and the real split they are compared with.
See docs/evaluation.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import BenchError
from metrics.base import MetricUnavailable, Setting
from metrics.inception import sha256_file


def load_npz_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 (N, C, H, W) images and optional labels from an npz holding uint8 NHWC ``x``."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(
            f"samples file {p} not found; pass an npz with uint8 NHWC images under 'x'"
        )
    with np.load(p) as z:
        if "x" not in z:
            raise BenchError(f"{p} has no array 'x'; save generated images as uint8 NHWC under 'x'")
        x = z["x"]
        y = z["y"] if "y" in z else None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise BenchError(
            f"{p}: 'x' must be uint8 (N, H, W, C) with C 1 or 3, got {x.dtype} {x.shape}"
        )
    xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    return xt, (torch.from_numpy(y).long() if y is not None else None)


def samples_available(ctx) -> None:
    """Raise MetricUnavailable with the fix when there is no way to get generated samples."""
    if ctx.samples:
        if not Path(ctx.samples).is_file():
            raise BenchError(
                f"samples file {ctx.samples} not found; pass an existing --samples FILE.npz"
            )
        return
    if ctx.cfg is None:
        raise MetricUnavailable(
            "no generated samples: pass --samples FILE.npz (uint8 NHWC under 'x'), "
            "or evaluate a saved run so that its sampler can draw them"
        )


SOURCES = ("auto", "fresh", "buffer")
SAMPLE_SOURCE = Setting(str, choices=SOURCES)
SAMPLER_STEPS = Setting(int, 0, unit="sampler steps; 0 = the saved replay buffer as it is")
REAL_SPLITS = ("train", "test", "train+test", "authors")


def sample_source(settings: dict, ctx) -> str:
    """Where generated samples come from: ``npz`` (``--samples``), ``buffer`` (the run's saved
    replay buffer, 0 sampler steps unless ``sampler_steps``) or ``fresh`` (new chains from the
    run's sampler). ``sample_source=auto`` takes the buffer when the run saved one."""
    want = settings.get("sample_source", "auto")
    if want not in SOURCES:
        raise BenchError(f"sample_source {want!r} unknown; choose one of: {', '.join(SOURCES)}")
    if ctx.samples:
        return "npz"
    has_buffer = ctx.buffer_state is not None
    if want == "buffer" and not has_buffer:
        raise MetricUnavailable(
            "sample_source=buffer: this run saved no replay buffer; use --set "
            "<metric>.sample_source=fresh"
        )
    return "buffer" if want == "buffer" or (want == "auto" and has_buffer) else "fresh"


def generated_samples(model, data, settings: dict, ctx) -> tuple[torch.Tensor, dict[str, Any]]:
    """(uint8 (N, C, H, W) generated images, provenance). Drawn once per evaluation and shared by metrics."""
    n = int(settings.get("n_samples") or 10000)
    steps = settings.get("sampler_steps")
    source = sample_source(settings, ctx)
    memo = ctx.generated
    key = (ctx.samples, source, n, steps)
    if key in memo:
        return memo[key]
    for (path, src, n_have, st), (x_have, info_have) in memo.items():
        if (path, src, st) == (key[0], source, steps) and n_have >= n:  # a larger set: its prefix
            return x_have[:n], info_have
    if source == "npz":
        x = load_npz_samples(ctx.samples)[0][:n]
        info = {"source": "npz", "path": str(ctx.samples), "sha256": sha256_file(ctx.samples)}
    else:
        samples_available(ctx)
        from bench.sampling.generate import make_sample_fn  # the sampler stack, only when drawing
        from bench.sampling.images import save_npz

        fn = make_sample_fn(
            model,
            ctx.cfg,
            ctx.device,
            steps=steps,
            data=data,
            batch_size=ctx.batch_size,
            show_progress=ctx.show_progress,
            buffer_state=ctx.buffer_state if source == "buffer" else None,
        )
        torch.manual_seed(ctx.seed)
        x01 = fn(n)
        x = x01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
        info = {
            "source": source,
            "steps": steps if steps is not None else "default",
            "from_buffer": source == "buffer",
        }
        if ctx.out_dir is not None:
            rel = Path("samples") / f"{ctx.protocol}-generated.npz"
            save_npz(Path(ctx.out_dir) / rel, x.float() / 255)
            info["npz"] = str(rel)
    memo[key] = (x, info)
    return x, info


@torch.no_grad()
def select_most_confident(
    model, x_u8: torch.Tensor, ratio: float, device, batch_size: int
) -> torch.Tensor:
    """Indices of the ``ratio`` most confident samples (max softmax) within each predicted class."""
    if ratio >= 1.0:
        return torch.arange(x_u8.shape[0])
    conf, pred = [], []
    for i in range(0, x_u8.shape[0], batch_size):
        p = model(x_u8[i : i + batch_size].to(device).float().div(255)).float().softmax(1)
        c, k = p.max(1)
        conf.append(c.cpu())
        pred.append(k.cpu())
    conf, pred = torch.cat(conf), torch.cat(pred)
    keep = []
    for k in pred.unique():
        idx = torch.nonzero(pred == k).view(-1)
        m = int(ratio * idx.numel())
        keep.append(idx[conf[idx].argsort(descending=True)[:m]])
    return torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)


# real_split "authors": the real set the EB-JDAT authors' Task/data.py uses for each dataset
# (CIFAR-10: train+test, 60,000 images; CIFAR-100: the train set only); others: train+test
AUTHORS_REAL_SPLIT = {"cifar10": "train+test", "cifar100": "train"}


def resolve_real_split(split: str, data) -> str:
    """The split a ``real_split`` setting names for ``data`` (``authors`` depends on the dataset)."""
    return (
        AUTHORS_REAL_SPLIT.get(str(getattr(data, "name", "")), "train+test")
        if split == "authors"
        else split
    )


def real_images(data, split: str, n_real: int) -> torch.Tensor:
    # the paper protocol's noise is for the classifier only
    x_test = getattr(data, "x_test_clean", data.x_test)
    parts = {"train": [data.x_train], "test": [x_test], "train+test": [data.x_train, x_test]}
    if split not in parts:
        raise BenchError(f"real_split {split!r} unknown; choose one of: {', '.join(REAL_SPLITS)}")
    x = torch.cat(
        [
            p if p.dtype == torch.uint8 else p.mul(255).round().clamp(0, 255).to(torch.uint8)
            for p in parts[split]
        ]
    )
    return x[:n_real] if n_real and n_real > 0 else x
