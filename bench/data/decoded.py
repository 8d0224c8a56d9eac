"""Images decoded once into uint8 arrays, and the cache that keeps them: the decoding side of
``folder:PATH`` (bench/data/folder.py; docs/data.md describes both).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError, DiskFull

CACHE_VERSION = 1  # bump when decoding changes: old caches then no longer match


def listing_key(root: Path, files: list[Path], size: int, layout: str) -> str:
    """A short hash of every file's path relative to ``root``, byte size and mtime (and the
    decoding)."""
    h = hashlib.sha256(f"folder v{CACHE_VERSION} {size} {layout}\n".encode())
    rows = []
    for f in files:
        try:
            st = f.stat()
        except OSError as exc:
            raise BenchError(
                f"cannot read {f} ({exc.strerror or type(exc).__name__}); fix or remove it"
            )
        rows.append(f"{f.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n")
    for row in sorted(rows):
        h.update(row.encode())
    return h.hexdigest()[:16]


def decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, the centred square of side the shorter side, resized
    (bicubic, antialiased) to ``size``. A JPEG is decoded at a reduced scale still at least 2x
    ``size``."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            drafted = img.draft(None, (2 * size, 2 * size))  # JPEG only; None for other formats
            # the content's extent after the draft
            w, h = (drafted[1][2], drafted[1][3]) if drafted else img.size
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # a palette with transparency converts through RGBA
            img = img.convert("RGB")
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        text = str(exc).replace(repr(str(path)), "").replace(str(path), "")
        detail = " ".join(text.split()).strip(" :")[:80]
        raise BenchError(
            f"cannot read image {path} ({type(exc).__name__}{': ' + detail if detail else ''}); "
            "remove or replace the file"
        ) from None
    if arr.shape != (size, size, 3):
        raise BenchError(
            f"cannot read image {path} (decoded as {arr.shape}); remove or replace the file"
        )
    return arr.transpose(2, 0, 1)


def decode_all(files: list[Path], size: int, desc: str) -> np.ndarray:
    """Decode ``files`` into one uint8 (N, 3, size, size) array, in order, on a few threads (PIL
    releases the GIL), with a progress bar on a terminal. The first unreadable file (in order)
    fails."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    # disable=None: off unless a TTY
    bar = tqdm(total=len(files), desc=desc, unit="img", disable=None, dynamic_ncols=True)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(8, cpus or 1)) if len(files) >= 64 else 1
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        images = (pool.map if pool else map)(lambda f: decode(f, size), files)
        for i, arr in enumerate(images):
            out[i] = arr
            bar.update(1)
    except BaseException:
        bar.leave = False  # the error line follows alone
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return out


def read_cache(
    path: Path, expect: dict[str, np.ndarray], size: int
) -> dict[str, np.ndarray] | None:
    """The cached arrays when ``path`` holds what this listing decodes to, else None (missing,
    corrupt, or of other images: it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    except Exception:
        return None
    for split in ("train", "test"):
        x, y, want = arrays[f"x_{split}"], arrays[f"y_{split}"], expect[f"y_{split}"]
        if x.dtype != np.uint8 or x.shape != (len(want), 3, size, size):
            return None
        if y.shape != want.shape or not np.array_equal(y, want):
            return None
    return arrays if arrays["classes"].tolist() == expect["classes"].tolist() else None


def write_cache(dirs: list[Path], name: str, arrays: dict[str, np.ndarray]) -> Path | None:
    """Write the cache into the first folder of ``dirs`` that takes it (atomically); None when none
    does."""
    from bench.core.io import _atomic

    errors = []
    for i, d in enumerate(dirs):
        path = d / name
        try:  # uncompressed: decoded pixels barely compress
            _atomic(path, lambda fh: np.savez(fh, **arrays))
        except (OSError, DiskFull) as exc:
            errors.append(f"{d}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
            continue
        if i == 0:  # beside the data the folder is this dataset's own: drop earlier file states
            for old in d.glob(f"{name.rsplit('-', 1)[0]}-*.npz"):
                if old.name != name:
                    old.unlink(missing_ok=True)
        return path
    print(
        f"warning: cannot cache the decoded images ({'; '.join(errors)}); they will be decoded "
        "again next time",
        file=sys.stderr,
    )
    return None
