"""``shapes10``, the embedded default dataset (the README's "Datasets" table): ten classes of shapes
at random pose and colour over cluttered gradients, 2x supersampled with pixel noise, generated
deterministically on first use and cached as an .npz in ``data_dir``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.core.errors import DiskFull
from bench.core.io import _atomic
from bench.data.base import ImageData, register_dataset

# each class's inside-test in local shape coordinates (unit scale); r = sqrt(u² + v²)
SHAPES = {
    "disk": lambda u, v, r: r < 0.75,
    "ring": lambda u, v, r: (r > 0.5) & (r < 0.88),
    "square": lambda u, v, r: np.maximum(np.abs(u), np.abs(v)) < 0.65,
    "triangle": lambda u, v, r: (v > -0.5) & (v < 1.0 - np.sqrt(3.0) * np.abs(u)),  # pointing up
    "cross": lambda u, v, r: (
        ((np.abs(u) < 0.24) & (np.abs(v) < 0.88)) | ((np.abs(v) < 0.24) & (np.abs(u) < 0.88))
    ),
    "star": lambda u, v, r: r < 0.5 + 0.38 * np.cos(5 * np.arctan2(v, u)),  # five-pointed
    "crescent": lambda u, v, r: (r < 0.8) & ((u - 0.38) ** 2 + v**2 > 0.62**2),
    "bar": lambda u, v, r: (np.abs(u) < 0.92) & (np.abs(v) < 0.2),
    "pair": lambda u, v, r: ((u - 0.48) ** 2 + v**2 < 0.34**2) | ((u + 0.48) ** 2 + v**2 < 0.34**2),
    "corner": lambda u, v, r: (
        ((u > -0.7) & (u < -0.28) & (v > -0.7) & (v < 0.8))  # an L
        | ((u > -0.7) & (u < 0.75) & (v > -0.7) & (v < -0.28))
    ),
}
CLASSES = list(SHAPES)
VERSION = 1
SIZE = 32
SUPERSAMPLE = 2


def _colour(rng: np.random.Generator, n: int, brightness: np.ndarray) -> np.ndarray:
    """Random hues scaled to the requested mean brightness, shape (n, 3)."""
    c = rng.uniform(0.05, 1.0, size=(n, 3)).astype(np.float32)
    c = c / c.mean(axis=1, keepdims=True) * brightness[:, None]
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, N x 32 x 32 x 3) with balanced labels, from ``seed``."""
    rng = np.random.default_rng(seed)

    def uni(lo, hi, m):
        return rng.uniform(lo, hi, m).astype(np.float32)

    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    s = SIZE * SUPERSAMPLE
    coords = ((np.arange(s) + 0.5) / s * 2 - 1).astype(np.float32)  # pixel centres in [-1, 1]
    Y, X = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    chunk = 500
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        m = lab.shape[0]
        # background: a two-colour linear gradient in a random direction
        bg_bright = uni(0.1, 0.9, m)
        c0 = _colour(rng, m, np.clip(bg_bright + uni(-0.1, 0.1, m), 0.02, 1.0))
        c1 = _colour(rng, m, np.clip(bg_bright + uni(-0.1, 0.1, m), 0.02, 1.0))
        ang = uni(0, 2 * np.pi, m)
        t = (np.cos(ang)[:, None, None] * X + np.sin(ang)[:, None, None] * Y + 1.5) / 3.0
        img = c0[:, None, None, :] * (1 - t[..., None]) + c1[:, None, None, :] * t[..., None]
        # clutter: 3 to 6 small rectangles in colours near the background brightness
        for _ in range(6):
            present = rng.random(m) < 0.75
            cx, cy = uni(-1, 1, m), uni(-1, 1, m)
            hw, hh = uni(0.04, 0.16, m), uni(0.04, 0.16, m)
            col = _colour(rng, m, np.clip(bg_bright + uni(-0.35, 0.35, m), 0.02, 1.0))
            inside = (np.abs(X[None] - cx[:, None, None]) < hw[:, None, None]) & (
                np.abs(Y[None] - cy[:, None, None]) < hh[:, None, None]
            )
            inside &= present[:, None, None]
            img = np.where(inside[..., None], col[:, None, None, :], img)
        # the shape: random pose and a colour contrasting with the background
        scale = uni(0.32, 0.55, m)
        cx = uni(-0.9, 0.9, m) * (1 - scale)
        cy = uni(-0.9, 0.9, m) * (1 - scale)
        theta = uni(0, 2 * np.pi, m)
        dx, dy = X[None] - cx[:, None, None], Y[None] - cy[:, None, None]
        ct, st = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
        u = (ct * dx + st * dy) / scale[:, None, None]
        v = (-st * dx + ct * dy) / scale[:, None, None]
        fg_bright = np.where(bg_bright < 0.5, uni(0.6, 1.0, m), uni(0.0, 0.35, m))
        fg = _colour(rng, m, fg_bright)
        mask = np.zeros((m, s, s), dtype=bool)
        for k in range(len(CLASSES)):
            sel = lab == k
            if sel.any():
                us, vs = u[sel], v[sel]
                mask[sel] = SHAPES[CLASSES[k]](us, vs, np.sqrt(us * us + vs * vs))
        img = np.where(mask[..., None], fg[:, None, None, :], img)
        img = img + np.float32(0.04) * rng.standard_normal(size=img.shape, dtype=np.float32)
        img = img.reshape(m, SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE, 3).mean(axis=(2, 4))
        images[start : start + m] = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def cache_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / f"shapes10-v{VERSION}.npz"


def load_arrays(
    data_dir: str | Path, n_train: int = 10_000, n_test: int = 2_000
) -> dict[str, np.ndarray]:
    """Generate (once) and cache the dataset; the cache is written atomically."""
    path = cache_path(data_dir)
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
            if arrays["x_train"].shape[0] == n_train and arrays["x_test"].shape[0] == n_test:
                return arrays
        except Exception:
            pass  # a corrupt cache is regenerated
    x_train, y_train = generate(n_train, seed=20_260_001)
    x_test, y_test = generate(n_test, seed=20_260_002)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    try:  # an unwritable data_dir only costs regenerating next time
        _atomic(path, lambda fh: np.savez(fh, **arrays))
    except (OSError, DiskFull):
        pass
    return arrays


@register_dataset("shapes10")
def shapes10(cfg) -> ImageData:
    a = load_arrays(cfg.data_dir)
    nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    return ImageData(
        name="shapes10",
        x_train=nchw(a["x_train"]),
        y_train=torch.from_numpy(a["y_train"]),
        x_test=nchw(a["x_test"]),
        y_test=torch.from_numpy(a["y_test"]),
        classes=list(CLASSES),
        source=f"procedural v{VERSION} ({cache_path(cfg.data_dir)})",
    )
