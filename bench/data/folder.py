"""``folder:PATH``: your images in class folders (ImageNet or Tiny-ImageNet layout), resized to 32 or
64 pixels: listed by torchvision's ``ImageFolder``, decoded once, cached as uint8 arrays beside the
data. The layouts, the decoding, the cache and the errors are described in docs/data.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.data.base import DATASETS, ImageData
from bench.data.decoded import decode_all, listing_key, read_cache, write_cache

SIZES = (32, 64)  # the image sizes data.image_size may ask a folder dataset for
DEFAULT_SIZE = 32  # data.image_size=0
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
CACHE_DIR = ".trilemma-cache"
Samples = list[tuple[Path, int]]  # (image file, label), as ImageFolder lists them


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .DS_Store, ._x.jpg, .trilemma-cache


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and _visible(d.name)), key=str)


def _list_images(folder: Path, class_to_idx: dict[str, int]) -> Samples:
    """The images in ``folder/<class>/`` (recursively, symlinks followed) as ImageFolder lists them,
    but skipping hidden entries and counting a folder reached twice (a symlink loop) once, by its
    shortest path; in each class sorted by path."""
    from torchvision.datasets import ImageFolder

    start = len(str(folder)) + 1

    def is_image(path: str) -> bool:
        rel = path[start:]  # below folder: a hidden entry on the way is skipped
        return (
            os.path.splitext(rel)[1].lower() in EXTENSIONS
            and f"{os.sep}." not in os.sep + rel
            and os.path.isfile(path)  # not a broken link or a socket named x.jpg
        )

    found = ImageFolder.make_dataset(
        str(folder), class_to_idx, is_valid_file=is_image, allow_empty=True
    )
    first: dict[tuple[int, str], str] = {}  # (label, real folder) -> its shortest listed path
    for y, d in sorted(
        {(y, os.path.dirname(p)) for p, y in found}, key=lambda yd: (yd[1].count(os.sep), yd[1])
    ):
        first.setdefault((y, os.path.realpath(d)), d)
    keep = {(y, d) for (y, _), d in first.items()}
    listed = ((Path(p), y) for p, y in found if (y, os.path.dirname(p)) in keep)
    return sorted(listed, key=lambda s: (s[1], s[0]))


def _no_class_folders(folder: Path, rel: str) -> BenchError:
    flat = any(p.suffix.lower() in EXTENSIONS and _visible(p.name) for p in folder.iterdir())
    hint = " (it holds images directly: sort them into one folder per class first, docs/data.md)"
    return BenchError(
        f"{folder} holds no class folders{hint if flat else ''}; put each class's images in "
        f"{rel}/<class>/"
    )


def _class_split(folder: Path, classes: list[str], rel: str) -> Samples:
    """Images in ``folder/<class>/``; every class folder must hold images and (for held-out splits)
    be a class."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise _no_class_folders(folder, rel)
    index = {c: i for i, c in enumerate(classes)}
    known = {d.name: index[d.name] for d in dirs if d.name in index}
    samples = _list_images(folder, known) if known else []
    labelled = {label for _, label in samples}
    for d in dirs:  # in order, so the first bad folder is the one named
        if d.name not in index:
            raise BenchError(
                f"{d} is not one of the classes (no train/{d.name}/ folder); remove it or add "
                f"training images in train/{d.name}/"
            )
        if index[d.name] not in labelled:
            try:
                os.listdir(d)  # ImageFolder skips unreadable folders: say why this one is empty
            except OSError as exc:
                raise BenchError(
                    f"cannot read the folder {d} ({exc.strerror or type(exc).__name__}); fix its "
                    "permissions"
                )
            raise BenchError(
                f"class folder {d} holds no images ({' '.join(EXTENSIONS)}); add images or remove "
                "the folder"
            )
    return samples


def _annotated_split(folder: Path, annotations: Path, classes: list[str]) -> Samples:
    """Tiny-ImageNet's val/: images in ``folder/images/``, labels in ``annotations`` (file name,
    class, ...)."""
    index = {c: i for i, c in enumerate(classes)}
    images_dir = folder / "images"
    present = {p.name: p for p, _ in _list_images(folder, {"images": 0})}
    labelled: dict[str, int] = {}
    try:
        lines = annotations.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(
            f"cannot read {annotations} ({type(exc).__name__}); it must be text: file "
            "name<TAB>class..."
        )
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise BenchError(
                f"{annotations} line {n}: expected 'file name<TAB>class[<TAB>box...]', got "
                f"{line.strip()!r}"
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
            f"{images_dir / unlabelled[0]} has no line in {annotations} ({len(unlabelled)} "
            "image(s) without one); add the lines or remove the images"
        )
    return [(present[n], labelled[n]) for n in sorted(labelled)]


def scan(root: Path) -> tuple[str, list[str], Samples, Samples, str, list[Path]]:
    """Check the layout of ``root`` and list its images: (layout, classes, train, test, test folder
    name, extra files that decide labels)."""
    if not root.exists():
        raise BenchError(
            f"folder dataset {str(root)!r} not found; pass an existing folder as --dataset "
            "folder:PATH (with train/<class>/ and val/<class>/ inside)"
        )
    if not root.is_dir():
        raise BenchError(
            f"folder dataset {str(root)!r} is not a folder; for an .npz file use --dataset npz:PATH"
        )
    train = root / "train"
    if not train.is_dir():
        raise BenchError(
            f"folder dataset {str(root)!r} has no train/ folder; put each class's training images "
            f"in {root}/train/<class>/ (docs/data.md)"
        )
    classes = [d.name for d in _class_dirs(train)]
    if not classes:
        raise _no_class_folders(train, "train")
    if len(classes) < 2:
        raise BenchError(
            f"{train} holds 1 class folder ({classes[0]}/); a classifier needs at least 2: add "
            "another train/<class>/ folder"
        )
    train_split = _class_split(train, classes, "train")
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if test_dir is None:
        raise BenchError(
            f"folder dataset {str(root)!r} has no val/ (or test/) folder; put the held-out images "
            f"in {root}/val/<class>/ (or Tiny-ImageNet's val/images/ and val/val_annotations.txt)"
        )
    annotations = test_dir / f"{test_dir.name}_annotations.txt"
    if annotations.is_file() and (test_dir / "images").is_dir():
        test_split = _annotated_split(test_dir, annotations, classes)
        return "tiny-imagenet", classes, train_split, test_split, test_dir.name, [annotations]
    test_split = _class_split(test_dir, classes, test_dir.name)
    return "imagenet", classes, train_split, test_split, test_dir.name, []


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
    files = {
        split: [p for p, _ in samples] for split, samples in (("train", train), ("test", test))
    }
    key = listing_key(root, [*files["train"], *files["test"], *extra], size, layout)
    name = f"folder-{size}-{key}.npz"
    expect = {
        "y_train": np.asarray([y for _, y in train], np.int64),
        "y_test": np.asarray([y for _, y in test], np.int64),
        "classes": np.asarray(classes, dtype=str),
    }
    dirs = [root / CACHE_DIR, Path(getattr(cfg, "data_dir", "data")).expanduser() / "cache"]
    arrays, cache = None, None
    for d in dirs:
        arrays = read_cache(d / name, expect, size)
        if arrays is not None:
            cache = d / name
            break
    if arrays is None:
        label = root.resolve().name
        arrays = {
            "x_train": decode_all(files["train"], size, f"decoding {label} train/"),
            "x_test": decode_all(files["test"], size, f"decoding {label} {test_name}/"),
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
