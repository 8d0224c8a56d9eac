"""``npz:PATH``: bring-your-own data as arrays ``x`` (uint8 NHWC), ``y``, optional ``classes``.

If the file also holds ``x_test``/``y_test`` they are the test split; otherwise a fixed 20%
of the images (chosen with a fixed seed, independent of the run's seed) is held out as test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.data.base import DATASETS, ImageData

TEST_FRACTION = 0.2


def _nchw(x: np.ndarray, path: str, key: str) -> torch.Tensor:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise BenchError(
            f"{path}: array {key!r} must be uint8 of shape (N, H, W, 3) (or 1 channel), got {x.dtype} {x.shape}"
        )
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _labels(y: np.ndarray, n: int, path: str, key: str) -> torch.Tensor:
    if y.ndim != 1 or y.shape[0] != n or not np.issubdtype(y.dtype, np.integer):
        raise BenchError(
            f"{path}: array {key!r} must hold {n} integer labels, got {y.dtype} {y.shape}"
        )
    return torch.from_numpy(y.astype(np.int64))


@DATASETS.register_pattern(r"npz:(?P<path>.+)", "npz:PATH")
def npz_dataset(path, cfg) -> ImageData:
    path = str(path)
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(
            f"npz dataset {path!r} not found; pass an existing file as --dataset npz:PATH"
        )
    try:
        z = np.load(p, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise BenchError(
            f"cannot read {path!r} as .npz ({type(exc).__name__}); it must hold arrays x and y"
        )
    if "x" not in arrays or "y" not in arrays:
        raise BenchError(
            f"{path!r} must hold arrays 'x' (uint8 NHWC) and 'y' (labels); it has {sorted(arrays)}"
        )
    x = _nchw(arrays["x"], path, "x")
    y = _labels(arrays["y"], x.shape[0], path, "y")
    if x.shape[0] == 0:
        raise BenchError(f"{path!r} holds no images (array 'x' is empty)")
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].tolist()]
    else:
        classes = [str(i) for i in range(int(y.max()) + 1)]
    if "x_test" in arrays and "y_test" in arrays:
        x_test = _nchw(arrays["x_test"], path, "x_test")
        y_test = _labels(arrays["y_test"], x_test.shape[0], path, "y_test")
        x_train, y_train, held = x, y, "file"
    else:
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1234))
        n_test = int(round(TEST_FRACTION * x.shape[0]))
        test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        held = f"fixed {int(TEST_FRACTION * 100)}% hold-out"
    return ImageData(
        name=f"npz:{p.name}",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=classes,
        source=str(p.resolve()),
        info={"test_split": held},
    )
