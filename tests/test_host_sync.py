"""The training step never waits for the device between log steps (issue 6's "no host sync").

A dispatch mode records every aten op that must read a device value back to the host (``.item()``,
``bool(tensor)``, ``nonzero``, ``unique``, boolean-mask indexing ...). ``.tolist()`` and ``.cpu()``
dispatch no op on a CPU tensor and are not seen here; the code under test uses neither. On CPU these cost nothing,
but the same code on CUDA would stall the GPU once per call, so the test pins the code path that
CUDA takes (the class-Gaussian draw's dense form) and runs it here.
"""

from __future__ import annotations

import tempfile
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bench.sampling.gaussians as gaussians_mod
from bench.data import load_run_data
from bench.models import build_model
from bench.run.resolve import resolve_config
from bench.sampling import ClassGaussians, ReplayBuffer
from bench.train.trainer import Trainer
from methods import get_method

SYNCING_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "is_nonzero",
    "equal",
}


MASK_INDEXING_OPS = {"index", "index_put", "index_put_"}  # sync when an index is a boolean mask


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()))


class HostSyncRecorder(TorchDispatchMode):
    """Records syncing ops, with the project frame that issued them. The unfused optimiser's step
    counter (a CPU scalar read inside ``torch.optim``) is not a device read and is left out; the
    trainer uses the fused optimiser on CUDA."""

    def __init__(self):
        super().__init__()
        self.hits: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name in SYNCING_OPS or (name in MASK_INDEXING_OPS and _has_bool_index(args)):
            stack = traceback.format_stack()
            if not any("torch/optim/" in line for line in stack):
                ours = [
                    line.strip()
                    for line in stack
                    if "site-packages" not in line and "test_host_sync" not in line
                ]
                self.hits.append(f"{name} at {ours[-1] if ours else '?'}")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def cuda_code_path(monkeypatch):
    monkeypatch.setattr(gaussians_mod, "sync_free_default", lambda device: True)


def random_gaussians(num_classes=4, d=3 * 4 * 4, ranks=(48, 5, 48, 17), seed=0) -> ClassGaussians:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(num_classes, d, generator=g) - 0.5
    factors = [0.1 * torch.randn(d, r, generator=g) for r in ranks]
    return ClassGaussians(
        means, factors, torch.full((num_classes,), 0.01), torch.full((num_classes,), 100), (3, 4, 4)
    )


def test_dense_gaussian_draw_equals_the_gathered_one():
    gs = random_gaussians()
    y = torch.tensor([3, 0, 0, 2, 1, 3, 3, 0, 1])
    torch.manual_seed(5)
    gathered = gs.sample(y, dense=False)
    torch.manual_seed(5)
    dense = gs.sample(y, dense=True)
    assert gathered.shape == (9, 3, 4, 4)
    torch.testing.assert_close(dense, gathered, rtol=1e-5, atol=1e-6)
    # rows of one class differ (independent draws), and each lies near its class mean
    assert not torch.allclose(gathered[1], gathered[2])
    err = (gathered.flatten(1) - gs.means[y].clamp(-1, 1)).abs().mean(1)
    other = (gathered.flatten(1) - gs.means[(y + 1) % 4].clamp(-1, 1)).abs().mean(1)
    assert (err < other).all()


def test_replay_buffer_draw_does_not_sync(cuda_code_path):
    gs = random_gaussians()
    for conditional in (False, True):
        buf = ReplayBuffer(
            40,
            (3, 4, 4),
            4,
            init="informative",
            reinit_freq=0.5,
            conditional=conditional,
            gaussians=gs,
        )
        before = buf.x.clone()
        y = torch.randint(0, 4, (32,)) if conditional else None
        with HostSyncRecorder() as rec:
            x0, idx = buf.sample(32, y)
        assert rec.hits == []
        # about half the draws are fresh starts, the rest the stored chains
        kept = (x0 == before[idx]).flatten(1).all(1)
        assert 4 <= int(kept.sum()) <= 28


def test_the_recorder_sees_mask_indexing_and_item():
    x = torch.arange(6.0)
    with HostSyncRecorder() as rec:
        x[x > 2] = 0.0
        _ = x[torch.tensor([True, False] * 3)]
        _ = float(x.sum())
        _ = x[torch.tensor([0, 2])]  # integer indices: no sync
    assert [h.split(" at ")[0] for h in rec.hits] == ["index_put_", "index", "_local_scalar_dense"]


@pytest.mark.parametrize(
    "method,extra",
    [
        ("ce", []),
        ("pgd-at", []),
        ("trades", []),
        ("jem", []),
        ("jem++", []),
        ("ebjdat", []),
        ("ebjdat-sada-jem", []),
        ("jem++", ["optim.sam_rho=0.05"]),
        ("mart", []),
        ("sada-jem", []),
    ],
)
def test_a_training_step_between_log_steps_does_not_sync(method, extra, cuda_code_path):
    cfg = resolve_config(
        method,
        preset="smoke",
        device="cpu",
        overrides=["train.log_every=100", "data.batch_size=16", *extra],
    )
    data = load_run_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_classes)
    m = get_method(method).from_dict(cfg.method_cfg)
    m.setup(model, data, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, m, data, torch.device("cpu"), tmp, show_progress=False)
        model.train()
        trainer.train_step(0)  # the first step may read back (initial statistics)
        with HostSyncRecorder() as rec:
            trainer.train_step(1)
            trainer.train_step(2)
    assert rec.hits == [], f"{method}: the step waits for the device: {rec.hits[:3]}"
