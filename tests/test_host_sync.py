"""The training step never waits for the device between log steps (issue 6's "no host sync").

A dispatch mode (``HostSyncRecorder``, the one `bench doctor`'s host_sync check runs, in
bench/tools/doctor/steps.py) records every aten op that must read a device value back to the host
(``.item()``, ``bool(tensor)``, ``nonzero``, ``unique``, boolean-mask indexing ...). ``.tolist()``
and ``.cpu()`` dispatch no op on a CPU tensor and are not seen here; the code under test uses
neither. On CPU these cost nothing, but the same code on CUDA would stall the GPU once per call, so
the test pins the code path that CUDA takes (the class-Gaussian draw's dense form) and runs it here.
"""

from __future__ import annotations

import pytest
import torch

import bench.sampling.gaussians as gaussians_mod
from bench.run.resolve import resolve_config
from bench.sampling import ClassGaussians, ReplayBuffer
from bench.tools.doctor.steps import FastStep, HostSyncRecorder


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
    # `bench doctor`'s host_sync check: after a first step (which may read back initial
    # statistics), two more steps under the recorder
    check = FastStep(cfg).host_sync(steps=(1, 2))
    assert check.status == "pass", f"{method}: {check.detail}"
