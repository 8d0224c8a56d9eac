"""Every method on a 100-class dataset (CIFAR-100's shape): settings resolve for every preset, and
one training step of each runs with 100 outputs, the class-conditional parts sized by the data
(the JEM++ reference code hard-codes n_classes=10, also for CIFAR-100)."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from conftest import trainer_for

from bench.run.resolve import resolve_config
from methods import METHODS, get_method

BUILT_IN = sorted(m for m in METHODS.names() if get_method(m).__module__.startswith("methods."))


@pytest.fixture(scope="module")
def hundred_classes(tmp_path_factory):
    """An .npz shaped like CIFAR-100: 32x32 RGB, 100 classes, 4 images each (each class its own colour)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(100), 4)
    base = rng.integers(0, 256, (100, 1, 1, 3))
    x = np.clip(base[y] + rng.integers(-20, 21, (400, 32, 32, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("c100") / "c100.npz"
    np.savez(path, x=x, y=y, classes=np.array([f"class{i}" for i in range(100)]))
    return path


@pytest.mark.parametrize("preset", ["smoke", "cpu", "paper"])
def test_every_method_resolves_on_cifar100(preset):
    for method in BUILT_IN:
        cfg = resolve_config(method, preset=preset, dataset="cifar100")
        assert cfg.data.dataset == "cifar100" and cfg.method == method


@pytest.mark.parametrize("method", BUILT_IN)
def test_one_step_of_every_method_on_100_classes(method, hundred_classes):
    cfg = resolve_config(
        method,
        preset="smoke",
        device="cpu",
        dataset=f"npz:{hundred_classes}",
        overrides=["data.batch_size=16", "data.val_size=0", "train.amp=off"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        tr = trainer_for(cfg, tmp)
        model, m = tr.model, tr.method
        assert tr.data.num_classes == 100
        tr.model.train()
        before = [p.detach().clone() for p in tr.model.parameters()]
        terms = tr.train_step(0)
    assert torch.isfinite(terms["loss"]), terms
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, tr.model.parameters()))
    sampler = getattr(m, "sampler", None)
    if (
        sampler is not None and sampler.cfg.init == "informative"
    ):  # JEM++ / SADA-JEM / EB-JDAT bases
        assert sampler.gaussians.num_classes == 100 and sampler.num_classes == 100
