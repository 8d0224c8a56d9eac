"""Writing samples: a PNG grid for looking at, an npz of uint8 NHWC images for FID."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from bench.core.io import write_bytes


def to_uint8_nhwc(x01: torch.Tensor) -> np.ndarray:
    """Float images in [0, 1] (N, C, H, W) -> uint8 (N, H, W, C), clamped and rounded."""
    x = x01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def grid_array(x01: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """A (rows * H, nrow * W, C) uint8 tile of the images, ``pad`` white pixels between them."""
    imgs = to_uint8_nhwc(x01)
    n, h, w, c = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / nrow))
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        out[top : top + h, left : left + w] = imgs[i]
    return out


def save_grid(x01: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """Write a PNG grid of [0, 1] images (atomically); ``scale`` enlarges each pixel."""
    from PIL import Image

    arr = grid_array(x01, nrow)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes(path, buf.getvalue())
    return Path(path)


def save_npz(path: str | Path, x01: torch.Tensor, y: torch.Tensor | None = None, **meta) -> Path:
    """Write ``x`` (uint8 NHWC) and, when given, ``y`` (int64) to an npz, atomically."""
    arrays = {"x": to_uint8_nhwc(x01)}
    if y is not None:
        arrays["y"] = torch.as_tensor(y).long().cpu().numpy()
    for k, v in meta.items():
        arrays[k] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())
    return Path(path)
