"""``folder:PATH`` (bench/data/folder.py): the ImageNet-style and Tiny-ImageNet layouts, resizing to
data.image_size, the decoded-image cache, one-line errors for bad folders, and 64x64 end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_args
from PIL import Image

from bench.core.config import DataConfig, ModelConfig
from bench.core.errors import BenchError
from bench.data import load_dataset

# every image: its class's colour in the centred square, BAND (magenta) on the two sides of its longer
# axis; a correct centre crop shows only the class colour, a squash or an off-centre crop shows BAND
COLOURS = {"ant": (220, 30, 30), "moth": (30, 200, 30), "zebra": (30, 30, 220)}
BAND = (255, 0, 255)
SHAPES = [
    (56, 40),
    (40, 56),
    (47, 33),
    (25, 30),
]  # (width, height): landscape, portrait, odd, smaller than 32
FORMATS = [
    ("jpg", "JPEG"),
    ("PNG", "PNG"),
    ("JPEG", "JPEG"),
    ("bmp", "BMP"),
    ("webp", "WEBP"),
    ("gif", "GIF"),
    ("jpeg", "JPEG"),
]


def _image(colour, size) -> Image.Image:
    w, h = size
    a = np.empty((h, w, 3), np.uint8)
    a[:] = BAND
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    a[top : top + s, left : left + s] = colour
    return Image.fromarray(a)


def _write_images(folder: Path, cls: str, n: int, start: int = 0, prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        ext, fmt = FORMATS[i % len(FORMATS)]
        p = folder / f"{prefix}{cls}_{i}.{ext}"
        _image(COLOURS[cls], SHAPES[i % len(SHAPES)]).save(p, format=fmt)
        paths.append(p)
    return paths


TRAIN_COUNTS = {"zebra": 4, "ant": 3, "moth": 2}  # created in this (unsorted) order
VAL_COUNTS = {"moth": 2, "ant": 1, "zebra": 2}


def make_imagenet(root: Path, held_out: str = "val") -> Path:
    for k, (cls, n) in enumerate(TRAIN_COUNTS.items()):
        _write_images(root / "train" / cls, cls, n, start=k)
    for k, (cls, n) in enumerate(VAL_COUNTS.items()):
        _write_images(root / held_out / cls, cls, n, start=k + 3)
    # not images, or hidden: ignored
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / "._ant_0.jpg").write_bytes(b"macOS resource fork, not an image")
    (root / "train" / ".hidden-class").mkdir()
    return root


def make_tiny(root: Path) -> Path:
    """Tiny-ImageNet's layout: train/<wnid>/images/*.JPEG (+ boxes file), val/images + val_annotations.txt."""
    for k, (cls, n) in enumerate(TRAIN_COUNTS.items()):
        d = root / "train" / cls
        _write_images(d / "images", cls, n, start=k)
        (d / f"{cls}_boxes.txt").write_text("...\t0\t0\t8\t8\n")
    lines, i = [], 0
    (root / "val" / "images").mkdir(parents=True)
    for cls, n in VAL_COUNTS.items():
        for _ in range(n):
            name = f"val_{i}.JPEG"
            _image(COLOURS[cls], SHAPES[i % len(SHAPES)]).save(
                root / "val" / "images" / name, format="JPEG"
            )
            lines.append(f"{name}\t{cls}\t0\t0\t10\t10")
            i += 1
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines[::-1]) + "\n")  # any order
    _write_images(
        root / "test" / "images", "ant", 2
    )  # Tiny-ImageNet's unlabelled test/: ignored (val/ exists)
    return root


def _load(root: Path, tmp_path: Path, image_size: int = 0):
    return load_dataset(
        DataConfig(dataset=f"folder:{root}", image_size=image_size, data_dir=str(tmp_path / "data"))
    )


def _assert_colours_match_labels(x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> None:
    """Each image shows its label's colour: on average, and everywhere but near its edges (resampling
    draws a few pixels from beyond the crop; a squashed or off-centre image shows bands of BAND)."""
    m = x.shape[-1] // 8
    for img, label in zip(x.to(torch.int64), y.tolist()):
        target = torch.tensor(COLOURS[classes[label]]).view(3, 1, 1)
        mean_err = (img.float().mean((1, 2)) - target.view(3)).abs().max().item()
        assert mean_err <= 20 and (img[:, m:-m, m:-m] - target).abs().max() <= 40, (
            classes[label],
            mean_err,
        )


def _cache_files(root: Path) -> list[Path]:
    return sorted((root / ".trilemma-cache").glob("*"))


# -- layouts --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
def test_imagenet_layout(size, tmp_path):
    root = make_imagenet(tmp_path / "my-set")
    d = _load(root, tmp_path, size)
    assert d.name == "folder:my-set" and d.source == str(root.resolve())
    assert d.classes == [
        "ant",
        "moth",
        "zebra",
    ]  # sorted folder names; hidden folders and files skipped
    assert d.x_train.dtype == torch.uint8 and d.x_train.shape == (9, 3, size, size)
    assert d.x_test.shape == (5, 3, size, size) and d.y_train.dtype == torch.int64
    assert torch.bincount(d.y_train).tolist() == [3, 2, 4] and torch.bincount(
        d.y_test
    ).tolist() == [1, 2, 2]
    _assert_colours_match_labels(d.x_train, d.y_train, d.classes)  # centre-cropped, labels right
    _assert_colours_match_labels(d.x_test, d.y_test, d.classes)
    assert (
        d.info["layout"] == "imagenet"
        and d.info["image_size"] == size
        and d.info["test_split"] == "val/"
    )
    assert d.summary()["image_shape"] == [3, size, size]


def test_image_size_0_means_32_and_test_folder_stands_in_for_val(tmp_path):
    root = make_imagenet(tmp_path / "ds", held_out="test")
    d = _load(root, tmp_path)  # DataConfig's default image_size=0
    assert DataConfig().image_size == 0
    assert (
        d.x_train.shape[1:] == (3, 32, 32)
        and d.info["image_size"] == 32
        and d.info["test_split"] == "test/"
    )
    assert d.x_test.shape[0] == 5


def test_resize_is_bicubic_antialiased_on_the_shorter_side(tmp_path):
    """A fine checkerboard averages to grey when shrunk with antialiasing (nearest or no-antialias
    sampling keeps extreme values); a shorter side of 64 at size 64 leaves the pixels as they are."""
    root = make_imagenet(tmp_path / "ds")
    board = (np.indices((128, 160)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([board] * 3, -1)).save(root / "train" / "ant" / "board.png")
    exact = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(exact).save(root / "train" / "moth" / "exact.png")
    d = _load(root, tmp_path, 64)
    files = sorted(
        p.name
        for p in (root / "train" / "ant").iterdir()
        if p.suffix.lower() != ".txt" and not p.name.startswith(".")
    )
    board_out = d.x_train[files.index("board.png")]
    assert abs(board_out.float().mean().item() - 127.5) < 3 and board_out.float().std().item() < 10
    moth = sorted(p.name for p in (root / "train" / "moth").iterdir())
    exact_out = d.x_train[len(files) + moth.index("exact.png")]  # after the ant images
    assert torch.equal(exact_out, torch.from_numpy(exact).permute(2, 0, 1))


def test_large_jpeg_decoded_at_reduced_scale_matches_a_full_decode(tmp_path):
    """ImageNet-sized JPEGs are decoded at 1/4 scale here (libjpeg's draft); the crop stays centred and
    the result is close to resizing the fully decoded image."""
    from bench.data.decoded import decode

    yy, xx = np.mgrid[0:480, 0:640]
    a = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) * 255 // 1118], -1).astype(np.uint8)
    a[:, :80] = a[:, -80:] = BAND  # outside the centred 480x480 square
    path = tmp_path / "big.jpg"
    Image.fromarray(a).save(path, quality=95)
    for size in (32, 64):
        got = decode(path, size).astype(int)
        with Image.open(path) as full:
            ref = np.asarray(
                full.convert("RGB").resize(
                    (size, size), Image.Resampling.BICUBIC, box=(80, 0, 560, 480)
                )
            )
        assert got.shape == (3, size, size)
        assert np.abs(got - ref.transpose(2, 0, 1).astype(int)).mean() < 3


def test_tiny_imagenet_layout(tmp_path):
    root = make_tiny(tmp_path / "tiny-imagenet-200")
    d = _load(root, tmp_path, 64)
    assert d.name == "folder:tiny-imagenet-200" and d.info["layout"] == "tiny-imagenet"
    assert d.classes == ["ant", "moth", "zebra"]
    assert d.x_train.shape == (9, 3, 64, 64) and d.x_test.shape == (
        5,
        3,
        64,
        64,
    )  # boxes files, test/ ignored
    assert torch.bincount(d.y_test).tolist() == [1, 2, 2]
    _assert_colours_match_labels(d.x_train, d.y_train, d.classes)
    _assert_colours_match_labels(d.x_test, d.y_test, d.classes)  # labels from val_annotations.txt


def test_symlinked_class_folders_are_followed(tmp_path):
    """A subset made of symlinks into a full copy (docs/data.md) loads like the real folders."""
    full = make_imagenet(tmp_path / "full")
    subset = tmp_path / "subset"
    for split in ("train", "val"):
        (subset / split).mkdir(parents=True)
        for cls in ("ant", "zebra"):
            (subset / split / cls).symlink_to(full / split / cls, target_is_directory=True)
    d = _load(subset, tmp_path)
    assert d.classes == ["ant", "zebra"] and torch.bincount(d.y_train).tolist() == [3, 4]
    _assert_colours_match_labels(d.x_train, d.y_train, d.classes)


# -- the cache ------------------------------------------------------------------------------------------
def _no_decoding(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(Image, "open", refuse)


def test_second_load_reads_the_cache_and_decodes_nothing(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "ds")
    first = _load(root, tmp_path, 64)
    (cache,) = _cache_files(root)  # one file, no temporary files left
    assert re.fullmatch(r"folder-64-[0-9a-f]{16}\.npz", cache.name) and first.info[
        "decoded_cache"
    ] == str(cache)
    with np.load(cache) as z:
        assert z["x_train"].dtype == np.uint8 and z["x_train"].shape == (9, 3, 64, 64)
    with monkeypatch.context() as m:
        _no_decoding(m)
        second = _load(root, tmp_path, 64)
        for k in ("x_train", "y_train", "x_test", "y_test"):
            assert torch.equal(getattr(first, k), getattr(second, k))
        assert second.classes == first.classes
        with pytest.raises(
            BenchError, match="cannot read image"
        ):  # 32 is another cache: it must decode
            _load(root, tmp_path, 32)
        # a changed file (here only its mtime) changes the key: the images are decoded again
        f = next((root / "val" / "moth").iterdir())
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
        with pytest.raises(BenchError, match="cannot read image"):
            _load(root, tmp_path, 64)
    third = _load(root, tmp_path, 64)
    (new_cache,) = [
        p for p in _cache_files(root) if p.name.startswith("folder-64-")
    ]  # the stale one is gone
    assert new_cache != cache and torch.equal(third.x_train, first.x_train)


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "ds")
    first = _load(root, tmp_path)
    (cache,) = _cache_files(root)
    cache.write_bytes(cache.read_bytes()[:200])  # truncated
    again = _load(root, tmp_path)
    assert torch.equal(again.x_train, first.x_train) and torch.equal(again.y_test, first.y_test)
    with np.load(cache) as z:  # rewritten whole
        assert z["x_test"].shape == (5, 3, 32, 32)
    with monkeypatch.context() as m:
        _no_decoding(m)
        assert torch.equal(_load(root, tmp_path).x_test, first.x_test)


def test_cache_falls_back_to_data_dir_when_the_data_folder_cannot_take_it(tmp_path, monkeypatch):
    root = make_imagenet(tmp_path / "ds")
    (root / ".trilemma-cache").write_text("a file where the cache folder would go")
    first = _load(root, tmp_path)
    (cache,) = (tmp_path / "data" / "cache").glob("folder-32-*.npz")
    assert first.info["decoded_cache"] == str(cache)
    with monkeypatch.context() as m:
        _no_decoding(m)
        assert torch.equal(_load(root, tmp_path).x_train, first.x_train)


# -- bad input: one line, exit code 2, nothing written ------------------------------------------------------
def _corrupt(root: Path, how: str) -> Path:
    make_imagenet(root)
    bad = root / "val" / "moth" / "broken.jpg"
    _image(COLOURS["moth"], (56, 40)).save(bad, format="JPEG")
    good = bad.read_bytes()
    bad.write_bytes(
        good[: len(good) // 2] if how == "truncated" else b"\x00garbage, not a JPEG" * 20
    )
    return bad


def _tiny_unknown_class(root: Path) -> None:
    make_tiny(root)
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn99999999\t0\t0\t1\t1\n")


BAD = {
    "missing": (lambda r: None, ["folder dataset", "not found", "--dataset folder:PATH"]),
    "no-train": (
        lambda r: _write_images(r / "val" / "ant", "ant", 2),
        ["has no train/ folder", "train/<class>/"],
    ),
    "no-class-folders": (
        lambda r: _write_images(r / "train", "ant", 2),
        ["train holds no class folders", "holds images directly", "train/<class>/"],
    ),
    "empty-class": (
        lambda r: (
            make_imagenet(r),
            (r / "train" / "emu").mkdir(),
            (r / "train" / "emu" / "x.txt").touch(),
        ),
        ["class folder", "emu holds no images", "add images or remove the folder"],
    ),
    "one-class": (
        lambda r: (
            _write_images(r / "train" / "ant", "ant", 2),
            _write_images(r / "val" / "ant", "ant", 1),
        ),
        ["holds 1 class folder (ant/)", "at least 2"],
    ),
    "no-val": (
        lambda r: (make_imagenet(r), __import__("shutil").rmtree(r / "val")),
        ["has no val/ (or test/) folder", "val/<class>/"],
    ),
    "unknown-val-class": (
        lambda r: (
            make_imagenet(r),
            _write_images(r / "val" / "zebra", "zebra", 1),
            (r / "val" / "zebra").rename(r / "val" / "emu"),
        ),
        ["val/emu is not one of the classes", "no train/emu/ folder"],
    ),
    "corrupt-image": (
        lambda r: _corrupt(r, "garbage"),
        ["cannot read image", "broken.jpg", "remove or replace"],
    ),
    "truncated-image": (
        lambda r: _corrupt(r, "truncated"),
        ["cannot read image", "broken.jpg", "remove or replace"],
    ),
    "tiny-unknown-class": (
        _tiny_unknown_class,
        ["val_annotations.txt line 6", "'n99999999' is not one of the classes"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_folder_is_refused_in_one_line_and_nothing_is_written(case, bench_cli, tmp_path):
    make, fragments = BAD[case]
    root = tmp_path / "ds"
    make(root)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out, data = tmp_path / "results", tmp_path / "data"
    res = bench_cli(
        "run", "--method", "ce", *make_tiny_args(out, data, steps=1), "--dataset", f"folder:{root}"
    )
    _assert_one_line(res, *fragments)
    assert (
        sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    )  # no cache, no run


@pytest.mark.parametrize(
    "sets, dataset, fragments",
    [
        (
            ["data.image_size=48"],
            "folder",
            ["data.image_size must be 0 (the dataset's own size), 32 or 64, got 48"],
        ),
        (
            ["data.image_size=64"],
            "npz",
            [
                "data.image_size=64, but dataset npz:d.npz has 32x32 images",
                "--set data.image_size=0",
            ],
        ),
    ],
)
def test_bad_image_size_is_refused_in_one_line(sets, dataset, fragments, bench_cli, tmp_path):
    if dataset == "folder":
        name = f"folder:{make_imagenet(tmp_path / 'ds')}"
    else:
        rng = np.random.default_rng(0)
        np.savez(
            tmp_path / "d.npz",
            x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
            y=np.arange(40) % 2,
        )
        name = f"npz:{tmp_path / 'd.npz'}"
    args = [
        "run",
        "--method",
        "ce",
        *make_tiny_args(tmp_path / "results", tmp_path / "data", steps=1),
        "--dataset",
        name,
    ]
    for s in sets:
        args += ["--set", s]
    _assert_one_line(bench_cli(*args), *fragments)
    assert (
        not (tmp_path / "results").exists() and not (tmp_path / "ds" / ".trilemma-cache").exists()
    )


def test_unsupported_image_size_through_the_api(tmp_path):
    root = make_imagenet(tmp_path / "ds")
    with pytest.raises(BenchError, match=r"folder datasets are resized to 32 or 64 pixels"):
        _load(root, tmp_path, 48)
    assert not (root / ".trilemma-cache").exists()


def _assert_one_line(res, *fragments):
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# -- models at 64x64, listing, a run end to end ----------------------------------------------------------
def test_every_architecture_runs_on_64x64_images():
    from bench.models import ARCHS, build_model

    names = [n if n != "wrn-D-W" else "wrn-10-1" for n in ARCHS.names()]
    assert {"resnet8", "resnet8-wide", "preact-resnet18", "wrn-10-1"} <= set(names)
    for arch in names:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch), num_classes=7).eval()
        with torch.no_grad():
            for size in (32, 64):
                out = model(torch.rand(2, 3, size, size))
                assert out.shape == (2, 7) and torch.isfinite(out).all(), (arch, size)


def test_listed_with_a_description(bench_cli):
    res = bench_cli("list", "datasets")
    assert res.exit_code == 0, res.stderr
    (line,) = [
        ln for ln in res.stdout.splitlines() if ln.split() and ln.split()[0] == "folder:PATH"
    ]
    assert "train/<class>/" in line and "Tiny-ImageNet" in line and "32|64" in line


def test_run_on_a_folder_at_64x64(bench_cli, tmp_path):
    root = make_imagenet(tmp_path / "my-set")
    out = tmp_path / "results"
    res = bench_cli(
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "--dataset",
        f"folder:{root}",
        "--set",
        "data.image_size=64",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.n_examples=8",
        "--set",
        "data.batch_size=4",
        "--data-dir",
        str(tmp_path / "data"),
        "-q",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.stderr
    m = re.search(r"^record: (.+record\.json)$", res.stdout, re.M)
    assert m, res.stdout
    rec = json.loads(Path(m.group(1)).read_text())
    assert rec["status"] == "complete" and rec["training"]["steps_done"] == 2
    assert rec["config"]["data"]["image_size"] == 64
    data = rec["data"]
    assert (
        data["name"] == "folder:my-set"
        and data["image_shape"] == [3, 64, 64]
        and data["image_size"] == 64
    )
    assert (
        data["num_classes"] == 3
        and data["train"] == 9
        and data["test"] == 5
        and data["layout"] == "imagenet"
    )
