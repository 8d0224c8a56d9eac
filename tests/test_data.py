"""Datasets (shapes10, npz, cifar), the validation split, BatchStream and augment_batch."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from bench.core.config import DataConfig
from bench.core.errors import BenchError
from bench.data import BatchStream, augment_batch, load_dataset, shapes, split_validation, to_float


@pytest.fixture(scope="module")
def shapes10(shapes_data_dir):
    return load_dataset(DataConfig(dataset="shapes10", data_dir=str(shapes_data_dir)))


# -- shapes10 ------------------------------------------------------------------------------------
def test_shapes10_generation_is_deterministic_and_balanced():
    a_x, a_y = shapes.generate(600, seed=11)
    b_x, b_y = shapes.generate(600, seed=11)
    assert a_x.dtype == np.uint8 and a_x.shape == (600, 32, 32, 3)
    assert a_x.tobytes() == b_x.tobytes() and np.array_equal(a_y, b_y)
    assert np.bincount(a_y, minlength=10).tolist() == [60] * 10
    c_x, _ = shapes.generate(600, seed=12)
    assert not np.array_equal(a_x, c_x)
    # images use the whole range and are not constant
    assert a_x.min() < 30 and a_x.max() > 225 and a_x.reshape(600, -1).std(1).min() > 5


def test_shapes10_full_dataset(shapes10):
    d = shapes10
    assert d.x_train.shape == (10_000, 3, 32, 32) and d.x_test.shape == (2_000, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert d.classes == shapes.CLASSES and d.num_classes == 10
    assert torch.bincount(d.y_train, minlength=10).tolist() == [1000] * 10
    assert torch.bincount(d.y_test, minlength=10).tolist() == [200] * 10
    # train and test are different images
    train_hashes = {hashlib.sha1(x.numpy().tobytes()).digest() for x in d.x_train[:2000]}
    assert not any(hashlib.sha1(x.numpy().tobytes()).digest() in train_hashes for x in d.x_test)


def test_shapes10_cache_is_written_once_and_reused(tmp_path):
    a = shapes.load_arrays(tmp_path, n_train=100, n_test=20)
    path = shapes.cache_path(tmp_path)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [
        path.name
    ]  # no temp files left
    mtime = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    b = shapes.load_arrays(tmp_path, n_train=100, n_test=20)
    assert time.perf_counter() - t0 < 1.0
    assert path.stat().st_mtime_ns == mtime
    for k in a:
        assert np.array_equal(a[k], b[k])
    # the cached arrays are exactly what generation gives
    x, y = shapes.generate(100, seed=20_260_001)
    assert np.array_equal(a["x_train"], x) and np.array_equal(a["y_train"], y)
    # a corrupt cache is regenerated, not trusted
    path.write_bytes(b"not an npz")
    c = shapes.load_arrays(tmp_path, n_train=100, n_test=20)
    assert np.array_equal(c["x_train"], a["x_train"])


def _linear_probe(x_tr, y_tr, x_te, y_te, steps=80):
    x_tr, x_te = x_tr.float().flatten(1) / 255, x_te.float().flatten(1) / 255
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-3
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(x_tr.shape[1], 10)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(lin(x_tr), y_tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (lin(x_tr).argmax(1) == y_tr).float().mean().item(), (
            lin(x_te).argmax(1) == y_te
        ).float().mean().item()


def test_shapes10_is_not_linearly_solvable(shapes10):
    """A softmax classifier on raw pixels fits its training images but does not generalise."""
    d = shapes10
    train_acc, test_acc = _linear_probe(
        d.x_train[:1000], d.y_train[:1000], d.x_test, d.y_test, steps=50
    )
    assert train_acc > 0.4  # the probe is trained (it memorises) ...
    assert test_acc < 0.30  # ... yet stays far below what a small ConvNet reaches (resnet8: > 80%)


# -- npz ------------------------------------------------------------------------------------------
def _npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_loader_holds_out_a_fixed_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50) % 5
    name = _npz(tmp_path / "mine.npz", x=x, y=y, classes=np.array(list("abcde")))
    d1 = load_dataset(DataConfig(dataset=name))
    d2 = load_dataset(DataConfig(dataset=name))
    assert d1.name == "npz:mine.npz" and d1.classes == list("abcde")
    assert d1.x_train.shape == (40, 3, 8, 8) and d1.x_test.shape == (10, 3, 8, 8)
    assert torch.equal(d1.x_test, d2.x_test) and torch.equal(d1.y_train, d2.y_train)
    # the split is a partition of the file's images, NHWC -> NCHW without changing pixels
    got = sorted(
        map(
            bytes, [*d1.x_train.permute(0, 2, 3, 1).numpy(), *d1.x_test.permute(0, 2, 3, 1).numpy()]
        )
    )
    assert got == sorted(map(bytes, x))
    assert d1.info["test_split"].startswith("fixed")


def test_npz_loader_uses_given_test_split(tmp_path):
    x = np.zeros((12, 4, 4, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(12)
    name = _npz(tmp_path / "t.npz", x=x, y=np.arange(12) % 3, x_test=x[:5], y_test=np.arange(5) % 3)
    d = load_dataset(DataConfig(dataset=name))
    assert d.x_train.shape[0] == 12 and d.x_test.shape[0] == 5 and d.classes == ["0", "1", "2"]
    assert d.x_train[:, 0, 0, 0].tolist() == list(range(12))


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            dict(x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4, np.int64)),
            "'x' must be uint8 of shape",
        ),
        (
            dict(x=np.zeros((4, 3, 8, 8), np.uint8), y=np.zeros(4, np.int64)),
            "'x' must be uint8 of shape",
        ),
        (
            dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(5, np.int64)),
            "'y' must hold 4 integer labels",
        ),
        (
            dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4, np.float32)),
            "'y' must hold 4 integer labels",
        ),
        (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 2, -1])), "labels must lie in"),
        (
            dict(
                x=np.zeros((4, 8, 8, 3), np.uint8),
                y=np.array([0, 1, 2, 3]),
                classes=np.array(["a", "b"]),
            ),
            "labels must lie in \\[0, 1\\]",
        ),
        (dict(images=np.zeros((4, 8, 8, 3), np.uint8)), "must hold arrays 'x'"),
    ],
)
def test_npz_loader_rejects_bad_arrays(tmp_path, arrays, match):
    name = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BenchError, match=match) as exc:
        load_dataset(DataConfig(dataset=name))
    assert "\n" not in str(exc.value)


def test_npz_loader_missing_or_not_npz(tmp_path):
    with pytest.raises(BenchError, match="not found; pass an existing file"):
        load_dataset(DataConfig(dataset=f"npz:{tmp_path / 'nope.npz'}"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BenchError, match="cannot read"):
        load_dataset(DataConfig(dataset=f"npz:{junk}"))


def test_npz_loader_on_real_cifar(cifar_npz):
    d = load_dataset(DataConfig(dataset=f"npz:{cifar_npz}"))
    with np.load(cifar_npz) as z:
        n, classes = z["x"].shape[0], [str(c) for c in z["classes"]]
    assert d.x_train.shape[0] + d.x_test.shape[0] == n
    assert d.x_train.shape[1:] == (3, 32, 32) and d.classes == classes and d.num_classes == 10
    assert d.x_test.shape[0] == round(0.2 * n)
    assert set(d.y_train.unique().tolist()) == set(range(10))


# -- cifar without files -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, archive",
    [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz")],
)
def test_cifar_without_files_names_where_to_put_them(tmp_path, name, archive):
    t0 = time.perf_counter()
    with pytest.raises(BenchError) as exc:
        load_dataset(DataConfig(dataset=name, data_dir=str(tmp_path / "nowhere"), download=False))
    msg = str(exc.value)
    assert (
        "\n" not in msg
        and archive in msg
        and str(tmp_path / "nowhere") in msg
        and "--data-dir" in msg
    )
    assert time.perf_counter() - t0 < 10


# -- validation split ----------------------------------------------------------------------------------
def test_validation_split_is_seeded_disjoint_and_deterministic(shapes10):
    d = shapes10
    a = split_validation(d, 500, seed=0)
    b = split_validation(d, 500, seed=0)
    c = split_validation(d, 500, seed=1)
    assert a.x_val.shape[0] == 500 and a.x_train.shape[0] == 9_500
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.y_val, c.y_val)

    def keys(x):
        return {bytes(img.numpy().tobytes()) for img in x}

    val, train = keys(a.x_val), keys(a.x_train)
    assert len(val) == 500 and not (val & train) and len(val | train) == 10_000
    assert torch.equal(a.x_test, d.x_test)
    sub = split_validation(d, 500, seed=0, train_subset=300)
    assert (
        sub.x_train.shape[0] == 300
        and keys(sub.x_train) <= train
        and torch.equal(sub.x_val, a.x_val)
    )
    none = split_validation(d, 0, seed=0)
    assert none.x_val is None and torch.equal(none.x_train, d.x_train)
    with pytest.raises(BenchError, match="data.val_size"):
        split_validation(d, 10_000, seed=0)


# -- BatchStream ---------------------------------------------------------------------------------------
def test_batchstream_depends_only_on_seed_epoch_index():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    y = torch.arange(100)
    s1 = BatchStream(x, y, 16, seed=3)
    s2 = BatchStream(x, y, 16, seed=3)
    assert len(s1) == 6
    # random access in any order gives the same batches
    order = [(1, 5), (0, 0), (1, 0), (0, 5), (2, 3)]
    first = {k: s1.batch(*k) for k in order}
    for k in reversed(order):
        xb, yb = s2.batch(*k)
        assert torch.equal(xb, first[k][0]) and torch.equal(yb, first[k][1])
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # images and labels stay paired
    # an epoch visits distinct images; epochs are shuffled differently; seeds and streams differ
    epoch0 = torch.cat([s1.batch(0, i)[1] for i in range(len(s1))])
    assert epoch0.unique().numel() == 96
    assert not torch.equal(s1.batch(0, 0)[1], s1.batch(1, 0)[1])
    assert not torch.equal(s1.batch(0, 0)[1], BatchStream(x, y, 16, seed=4).batch(0, 0)[1])
    assert not torch.equal(
        s1.batch(0, 0)[1], BatchStream(x, y, 16, seed=3, stream=1).batch(0, 0)[1]
    )
    # unaffected by the global RNG
    torch.manual_seed(123)
    assert torch.equal(BatchStream(x, y, 16, seed=3).batch(1, 5)[1], first[(1, 5)][1])
    with pytest.raises(BenchError, match="data.batch_size=200.* exceeds the 100 training images"):
        BatchStream(x, y, 200, seed=0)


# -- augment_batch --------------------------------------------------------------------------------------
def test_augment_batch_keeps_shape_and_range_and_moves_pixels(shapes10):
    x = to_float(shapes10.x_train[:64])
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, generator=g)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    moved = (out - x).abs().flatten(1).amax(1) > 0
    assert moved.float().mean() > 0.8  # 81 crops x 2 flips: almost no image stays put
    # each output is a crop of the reflect-padded (possibly flipped) input
    pad = torch.nn.functional.pad(x, (4,) * 4, mode="reflect")
    for i in range(8):
        found = False
        for img in (pad[i], pad[i].flip(2)):
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(img[:, dy : dy + 32, dx : dx + 32], out[i]):
                        found = True
        assert found, i
    # deterministic given the generator; no-op when everything is off
    assert torch.equal(augment_batch(x, generator=torch.Generator().manual_seed(0)), out)
    assert torch.equal(augment_batch(x, crop_pad=0, flip=False), x)
    flipped = augment_batch(x, crop_pad=0, flip=True, generator=torch.Generator().manual_seed(1))
    same, mirrored = (
        [(flipped[i] == x[i]).all() for i in range(64)],
        [(flipped[i] == x[i].flip(2)).all() for i in range(64)],
    )
    # each image exactly one of the two (random images are not mirror-symmetric)
    assert all(s != m for s, m in zip(same, mirrored)) and 10 < sum(map(bool, mirrored)) < 54
    zeros = augment_batch(
        torch.ones(16, 3, 8, 8),
        pad_mode="zeros",
        flip=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert (zeros == 0).any() and zeros.max() == 1  # zero padding shows at the borders
    noisy = augment_batch(
        x, crop_pad=0, flip=False, noise_std=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert abs(float((noisy - x).std()) - 0.1) < 0.005  # noise added, not clamped


def test_generating_shapes10_leaves_every_global_rng_alone(tmp_path):
    """A run that generated the dataset cache must hold the same global RNG states as one that
    found it (issue: the cache's temporary name was drawn from numpy's global RNG)."""
    import random

    from bench.data.shapes import cache_path, load_arrays

    def states():
        return (repr(np.random.get_state()), random.getstate(), torch.get_rng_state())

    np.random.seed(7), random.seed(7), torch.manual_seed(7)
    before = states()
    load_arrays(tmp_path, n_train=20, n_test=10)  # generates and writes the cache
    assert cache_path(tmp_path).is_file()
    after = states()
    assert after[0] == before[0] and after[1] == before[1] and torch.equal(after[2], before[2])
