"""``folder:PATH``: your images in class folders (ImageNet or Tiny-ImageNet layout), resized to 32 or 64.

Layouts (docs/data.md):

- ImageNet-style: ``PATH/train/<class>/...`` and ``PATH/val/<class>/...`` (``test/`` when there is
  no ``val/``); the classes are the sorted names of the folders in ``train/``, and the images of a
  class are searched recursively in its folder (Tiny-ImageNet's ``train/<wnid>/images/``).
- Tiny-ImageNet's validation split: ``PATH/val/images/*`` labelled by ``PATH/val/val_annotations.txt``
  (tab-separated: file name, class, box...).

Every image is decoded once (PIL, RGB), resized so that its shorter side is ``data.image_size``
(32 when 0; bicubic, antialiased) and centre-cropped to a square. The decoded uint8 arrays are
cached as ``PATH/.trilemma-cache/folder-<size>-<key>.npz`` (``<data_dir>/cache/`` when PATH is
read-only), ``key`` a hash of every file's relative path, size and mtime: a second load with
unchanged files decodes nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError, DiskFull
from bench.data.base import DATASETS, ImageData

SIZES = (32, 64)  # the image sizes data.image_size may ask a folder dataset for
DEFAULT_SIZE = 32  # data.image_size=0
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
CACHE_DIR = ".trilemma-cache"
CACHE_VERSION = 1  # bump when decoding changes: old caches then no longer match
_EXT_TEXT = " ".join(EXTENSIONS)


@dataclass
class _Split:
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def _visible(p: Path) -> bool:
    return not p.name.startswith(
        "."
    )  # hidden files and folders (.DS_Store, ._x.jpg, .trilemma-cache) are skipped


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in EXTENSIONS and _visible(p)


def _images_in(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursively (symlinked folders followed once), sorted."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or the same folder linked twice
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(d))
        except OSError as exc:
            raise BenchError(
                f"cannot read the folder {d} ({exc.strerror or type(exc).__name__}); fix its permissions"
            )
        for e in entries:
            p = Path(e.path)
            if not _visible(p):
                continue
            if e.is_dir():  # follows symlinks
                stack.append(p)
            elif e.is_file() and _is_image(p):
                found.append(p)
    return sorted(found)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and _visible(d)), key=lambda d: d.name)


def _no_class_folders(folder: Path, rel: str) -> BenchError:
    flat = any(_is_image(p) for p in folder.iterdir())
    hint = (
        " (it holds images directly: sort them into one folder per class first, docs/data.md)"
        if flat
        else ""
    )
    return BenchError(
        f"{folder} holds no class folders{hint}; put each class's images in {rel}/<class>/"
    )


def _class_split(folder: Path, classes: list[str], rel: str) -> _Split:
    """Images in ``folder/<class>/``; every class folder must hold images and (for held-out splits) be a class."""
    index = {c: i for i, c in enumerate(classes)}
    dirs = _class_dirs(folder)
    if not dirs:
        raise _no_class_folders(folder, rel)
    split = _Split()
    for d in dirs:
        if d.name not in index:
            raise BenchError(
                f"{d} is not one of the classes (no train/{d.name}/ folder); remove it or add "
                f"training images in train/{d.name}/"
            )
        files = _images_in(d)
        if not files:
            raise BenchError(
                f"class folder {d} holds no images ({_EXT_TEXT}); add images or remove the folder"
            )
        split.files += files
        split.labels += [index[d.name]] * len(files)
    return split


def _annotated_split(folder: Path, annotations: Path, classes: list[str]) -> _Split:
    """Tiny-ImageNet's val/: images in ``folder/images/``, labels in ``annotations`` (file name, class, ...)."""
    index = {c: i for i, c in enumerate(classes)}
    images_dir = folder / "images"
    present = {p.name: p for p in _images_in(images_dir)}
    labelled: dict[str, int] = {}
    try:
        lines = annotations.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(
            f"cannot read {annotations} ({type(exc).__name__}); it must be text: file name<TAB>class..."
        )
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise BenchError(
                f"{annotations} line {n}: expected 'file name<TAB>class[<TAB>box...]', got {line.strip()!r}"
            )
        name, cls = parts[0].strip(), parts[1].strip()
        if cls not in index:
            raise BenchError(
                f"{annotations} line {n}: class {cls!r} is not one of the classes (no train/{cls}/ "
                "folder); remove the line or add training images"
            )
        if name not in present:
            raise BenchError(
                f"{annotations} line {n} names {name}, which is not an image in {images_dir}"
            )
        labelled[name] = index[cls]
    if not labelled:
        raise BenchError(f"{annotations} labels no images; a test split needs at least one")
    unlabelled = sorted(set(present) - set(labelled))
    if unlabelled:
        raise BenchError(
            f"{images_dir / unlabelled[0]} has no line in {annotations} ({len(unlabelled)} image(s) "
            "without one); add the lines or remove the images"
        )
    names = sorted(labelled)
    return _Split([present[n] for n in names], [labelled[n] for n in names])


def scan(root: Path) -> tuple[str, list[str], _Split, _Split, str, list[Path]]:
    """Check the layout of ``root`` and list its images: (layout, classes, train, test, test folder
    name, extra files that decide labels)."""
    if not root.exists():
        raise BenchError(
            f"folder dataset {str(root)!r} not found; pass an existing folder as --dataset folder:PATH "
            "(with train/<class>/ and val/<class>/ inside)"
        )
    if not root.is_dir():
        raise BenchError(
            f"folder dataset {str(root)!r} is not a folder; for an .npz file use --dataset npz:PATH"
        )
    train = root / "train"
    if not train.is_dir():
        raise BenchError(
            f"folder dataset {str(root)!r} has no train/ folder; put each class's training images in "
            f"{root}/train/<class>/ (docs/data.md)"
        )
    classes = [d.name for d in _class_dirs(train)]
    if not classes:
        raise _no_class_folders(train, "train")
    if len(classes) < 2:
        raise BenchError(
            f"{train} holds 1 class folder ({classes[0]}/); a classifier needs at least 2: add another "
            "train/<class>/ folder"
        )
    train_split = _class_split(train, classes, "train")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if test_dir is None:
        raise BenchError(
            f"folder dataset {str(root)!r} has no val/ (or test/) folder; put the held-out images in "
            f"{root}/val/<class>/ (or Tiny-ImageNet's val/images/ and val/val_annotations.txt)"
        )
    annotations = test_dir / f"{test_dir.name}_annotations.txt"
    if annotations.is_file() and (test_dir / "images").is_dir():
        return (
            "tiny-imagenet",
            classes,
            train_split,
            _annotated_split(test_dir, annotations, classes),
            test_dir.name,
            [annotations],
        )
    return (
        "imagenet",
        classes,
        train_split,
        _class_split(test_dir, classes, test_dir.name),
        test_dir.name,
        [],
    )


def listing_key(root: Path, files: list[Path], size: int, layout: str) -> str:
    """A short hash of every file's path relative to ``root``, byte size and mtime (and the decoding)."""
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
    (bicubic, antialiased) to ``size``. A JPEG is decoded at a reduced scale still at least 2x ``size``."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            drafted = img.draft(None, (2 * size, 2 * size))  # JPEG only; None for other formats
            w, h = (
                (drafted[1][2], drafted[1][3]) if drafted else img.size
            )  # the content's extent after the draft
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert(
                    "RGBA"
                )  # (a palette with transparency converts to RGB through RGBA)
            img = img.convert("RGB")
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        detail = " ".join(
            str(exc).replace(repr(str(path)), "").replace(str(path), "").split()
        ).strip(" :")[:80]
        raise BenchError(
            f"cannot read image {path} ({type(exc).__name__}{': ' + detail if detail else ''}); "
            "remove or replace the file"
        ) from None
    if arr.shape != (size, size, 3):
        raise BenchError(
            f"cannot read image {path} (decoded as {arr.shape}); remove or replace the file"
        )
    return arr.transpose(2, 0, 1)


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def decode_all(files: list[Path], size: int, desc: str) -> np.ndarray:
    """Decode ``files`` into one uint8 (N, 3, size, size) array, in order, on a few threads (PIL
    releases the GIL), with a progress bar on a terminal. The first unreadable file (in order) fails."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    bar = tqdm(
        total=len(files), desc=desc, unit="img", disable=None, dynamic_ncols=True
    )  # None: off unless a TTY
    workers = _workers() if len(files) >= 64 else 1
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        results = (
            pool.map(lambda f: decode(f, size), files) if pool else (decode(f, size) for f in files)
        )
        for i, arr in enumerate(results):
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


def _cache_dirs(root: Path, data_dir: str | Path) -> list[Path]:
    return [root / CACHE_DIR, Path(data_dir).expanduser() / "cache"]


def read_cache(
    path: Path, expect: dict[str, np.ndarray], size: int
) -> dict[str, np.ndarray] | None:
    """The cached arrays when ``path`` holds what this listing decodes to, else None (missing, corrupt,
    or of other images: it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "classes")}
    except Exception:
        return None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.shape != (len(expect[f"y_{split}"]), 3, size, size):
            return None
        if y.shape != expect[f"y_{split}"].shape or not np.array_equal(y, expect[f"y_{split}"]):
            return None
    if arrays["classes"].tolist() != expect["classes"].tolist():
        return None
    return arrays


def write_cache(dirs: list[Path], name: str, arrays: dict[str, np.ndarray]) -> Path | None:
    """Write the cache into the first folder of ``dirs`` that takes it (atomically); None when none does."""
    from bench.core.io import _atomic

    errors = []
    for i, d in enumerate(dirs):
        path = d / name
        try:
            _atomic(
                path, lambda fh: np.savez(fh, **arrays)
            )  # uncompressed: decoded pixels barely compress
        except (OSError, DiskFull) as exc:
            errors.append(f"{d}: {getattr(exc, 'strerror', None) or type(exc).__name__}")
            continue
        if (
            i == 0
        ):  # beside the data the folder is this dataset's own: drop caches of earlier file states
            for old in d.glob(f"{name.rsplit('-', 1)[0]}-*.npz"):
                if old.name != name:
                    old.unlink(missing_ok=True)
        return path
    print(
        f"warning: cannot cache the decoded images ({'; '.join(errors)}); they will be decoded again next time",
        file=sys.stderr,
    )
    return None


@DATASETS.register_pattern(r"folder:(?P<path>.+)", "folder:PATH")
def folder_dataset(path, cfg) -> ImageData:
    """your images in train/<class>/ and val/<class>/ (or Tiny-ImageNet's layout), resized to data.image_size 32|64"""
    requested = int(getattr(cfg, "image_size", 0) or 0)
    size = requested or DEFAULT_SIZE
    if size not in SIZES:
        raise BenchError(
            f"data.image_size={requested}: folder datasets are resized to 32 or 64 pixels "
            "(0 = 32); --set data.image_size=32 or --set data.image_size=64"
        )
    root = Path(str(path)).expanduser()
    layout, classes, train, test, test_name, extra = scan(root)
    key = listing_key(root, [*train.files, *test.files, *extra], size, layout)
    name = f"folder-{size}-{key}.npz"
    expect = {
        "y_train": np.asarray(train.labels, np.int64),
        "y_test": np.asarray(test.labels, np.int64),
        "classes": np.asarray(classes, dtype=str),
    }
    dirs = _cache_dirs(root, getattr(cfg, "data_dir", "data"))
    arrays, cache = None, None
    for d in dirs:
        arrays = read_cache(d / name, expect, size)
        if arrays is not None:
            cache = d / name
            break
    if arrays is None:
        label = root.resolve().name
        arrays = {
            "x_train": decode_all(train.files, size, f"decoding {label} train/"),
            "x_test": decode_all(test.files, size, f"decoding {label} {test_name}/"),
            **expect,
        }
        cache = write_cache(dirs, name, arrays)
    info = {"layout": layout, "image_size": size, "test_split": f"{test_name}/"}
    if cache is not None:
        info["decoded_cache"] = str(cache)
    return ImageData(
        name=f"folder:{root.resolve().name}",
        x_train=torch.from_numpy(arrays["x_train"]),
        y_train=torch.from_numpy(np.asarray(arrays["y_train"], np.int64)),
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(np.asarray(arrays["y_test"], np.int64)),
        classes=list(classes),
        source=str(root.resolve()),
        info=info,
    )
