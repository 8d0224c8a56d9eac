"""Atomic file writes: a temporary file in the same directory, fsync, then rename.

A reader (or a crash, or kill -9) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import DiskFull

FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left / quota exceeded
# read once: files get the permissions open() would give them (mkstemp makes them 0600)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if _is_disk_full(exc):
            raise DiskFull(
                f"no space left on the disk holding {path.parent} (writing {path.name}; any earlier "
                f"{path.name} is intact): free space there"
            ) from None
        raise


def _is_disk_full(exc: BaseException) -> bool:
    """Python reports a full disk as OSError(ENOSPC); torch.save as a RuntimeError raised while handling it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def remove_litter(folder: Path, name: str = "*") -> list[Path]:
    """Delete the temporary files that writes of ``folder/<name>`` killed midway left (``.<name>.*.tmp``).
    Call it only while no other process can be writing such files (under the lock their writers hold)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f".{name}.*.tmp") if p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)  # "nan" / "inf": JSON has no such numbers
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def save_npz(path: Path, **arrays: Any) -> None:
    """Write numpy arrays as one compressed ``.npz`` (atomically)."""
    import numpy as np

    _atomic(path, lambda fh: np.savez_compressed(fh, **arrays))


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text), mode="w")


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda fh: fh.write(data))


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


def torch_save(obj: Any, path: Path) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    try:
        _atomic(Path(path), lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
