"""Data-parallel training: batch sharding, the device and process checks, per-rank replay buffers,
and real 2-process gloo runs through torchrun (ce with an evaluation; pgd-at, jem++ and ebjdat tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from conftest import make_tiny_args

from bench.core.errors import BenchError
from bench.data import BatchStream, load_run_data
from bench.models import build_model
from bench.run.resolve import resolve_config
from bench.train import checkpoint
from bench.train import distributed as D
from bench.train.trainer import Trainer
from methods import get_method

REPO = Path(__file__).resolve().parent.parent


def test_rank_shards_partition_the_global_batch():
    x = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1).expand(200, 3, 2, 2).contiguous()
    y = torch.arange(200)
    single = BatchStream(x, y, 32, seed=3)
    ranks = [BatchStream(x, y, 16, seed=3, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(single) == 200 // 32
    for epoch in range(2):
        for i in range(len(single)):
            whole = single.batch(epoch, i)[1]
            parts = [s.batch(epoch, i)[1] for s in ranks]
            assert set(parts[0].tolist()).isdisjoint(parts[1].tolist())
            assert torch.equal(torch.cat(parts), whole)


def test_two_process_gloo_run_trains_and_writes_one_record(tmp_path, shapes_data_dir):
    out = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "bench",
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "-q",
        "--out",
        str(out),
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "train.epochs=1",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "eval.n_examples=64",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1, runs  # only rank 0 creates a run directory
    record = json.loads((runs[0] / "record.json").read_text())
    assert record["status"] == "complete"
    dist = record["distributed"]
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["global_batch"] == 128
    assert dist["ranks_in_sync"] is True  # averaged gradients keep the replicas identical
    # 512 images / (64 per rank x 2 ranks) = 4 steps per epoch
    assert record["training"]["total_steps"] == 4 and record["training"]["steps_done"] == 4
    assert all(
        h["loss"] == h["loss"] for h in record["training"]["history"] if "loss" in h
    )  # finite, logged
    assert record["evaluations"]["quick"]["clean"]["n_examples"] == 64
    ckpt = checkpoint.load(runs[0] / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["method_per_rank"]) == 2
    # only rank 0 wrote: exactly one record, no stray temporary files
    assert sorted(p.name for p in runs[0].iterdir() if p.is_file()) == ["record.json"]


# -- which backend and device a rank gets; how many processes fit ---------------------------------


@pytest.mark.parametrize(
    "pref, available, expected",
    [
        ("auto", True, True),
        ("auto", False, False),
        ("cuda", True, True),
        ("cuda:1", True, True),
        ("cuda", False, True),
        ("cpu", True, False),
    ],
)
def test_uses_cuda(pref, available, expected):
    assert D.uses_cuda(pref, available) is expected


def test_process_count_must_fit_the_visible_gpus():
    D.check_processes_fit(2, "cuda", 2)
    D.check_processes_fit(2, "auto", 4)
    D.check_processes_fit(8, "cpu", 2)  # gloo processes need no GPU
    D.check_processes_fit(8, "auto", 0)  # auto without a GPU: the CPU
    D.check_processes_fit(1, "cuda:3", 4)  # one process may name its GPU
    with pytest.raises(
        BenchError, match=r"^--nproc 4 needs one GPU per process but 2 are visible; use --nproc 2$"
    ):
        D.check_processes_fit(4, "cuda", 2)
    with pytest.raises(BenchError, match=r"but 1 is visible; use --nproc 1$"):
        D.check_processes_fit(2, "auto", 1)
    with pytest.raises(BenchError, match=r"no CUDA device is available; use --device cpu$"):
        D.check_processes_fit(2, "cuda", 0)
    with pytest.raises(
        BenchError, match=r"--device cuda:1 names one GPU but 2 processes .* use --device cuda"
    ):
        D.check_processes_fit(2, "cuda:1", 4)


def _gpus(monkeypatch, n: int) -> None:
    """Pretend this CPU machine sees ``n`` GPUs (the count is all the checks read)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize(
    "gpus, args, message",
    [
        (
            1,
            ["--device", "cuda"],
            "--nproc 2 needs one GPU per process but 1 is visible; use --nproc 1",
        ),
        (
            1,
            [],
            "--nproc 2 needs one GPU per process but 1 is visible; use --nproc 1",
        ),  # auto on a GPU host
        (0, ["--device", "cuda"], "no CUDA device is available; use --device cpu"),
        (
            4,
            ["--set", "device=cuda:1"],
            "--device cuda:1 names one GPU but 2 processes each need their own",
        ),
    ],
)
def test_nproc_beyond_the_gpus_is_refused_before_launching(
    gpus, args, message, monkeypatch, bench_cli, results_root, shapes_data_dir
):
    _gpus(monkeypatch, gpus)
    res = bench_cli(
        "run",
        "--method",
        "ce",
        "--nproc",
        "2",
        *make_tiny_args(results_root, shapes_data_dir),
        *args,
    )
    assert res.exit_code != 0
    assert len(res.error_lines) == 1 and message in res.error_lines[0], res.stderr
    assert (
        "launching" not in res.stderr and not results_root.exists()
    )  # nothing started, nothing written


def _torchrun_env(monkeypatch, local_world: int = 2) -> None:
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "0"),
        ("LOCAL_WORLD_SIZE", str(local_world)),
    ):
        monkeypatch.setenv(key, value)


def test_a_cuda_rank_never_falls_back_to_gloo(monkeypatch):
    """Under torchrun a CUDA device stops in one line before any process group exists, where the
    old code joined a gloo group and trained on the CPU."""
    _torchrun_env(monkeypatch)
    joined = []
    monkeypatch.setattr(torch_dist, "init_process_group", lambda *a, **k: joined.append((a, k)))
    _gpus(monkeypatch, 0)
    for pref in ("cuda", "cuda:1"):
        with pytest.raises(
            BenchError, match=rf"--device {pref} was asked for but no CUDA device is available"
        ):
            D.init(pref)
    _gpus(monkeypatch, 1)
    with pytest.raises(BenchError, match=r"--nproc 2 needs one GPU per process but 1 is visible"):
        D.init("auto")
    _gpus(monkeypatch, 2)
    monkeypatch.setattr(torch_dist, "is_nccl_available", lambda: False)
    with pytest.raises(BenchError, match=r"this PyTorch build has no NCCL.*--device cpu \(gloo\)$"):
        D.init("cuda")
    assert joined == []
    _gpus(monkeypatch, 0)
    info, device = D.init("auto")  # no GPU: the CPU over gloo, as before
    assert device == "cpu" and info.world == 2 and joined == [((), {"backend": "gloo"})]


# -- each rank's replay buffer is its own ---------------------------------------------------------


@pytest.mark.parametrize("method", ["jem", "jem++"])  # uniform and informative first fills
def test_each_rank_fills_its_own_replay_buffer(method, shapes_data_dir, tmp_path):
    cfg = resolve_config(
        method,
        preset="smoke",
        device="cpu",
        overrides=["data.batch_size=8", "data.train_subset=64", f"data.data_dir={shapes_data_dir}"],
    )
    data = load_run_data(cfg)

    def buffer(rank: int) -> torch.Tensor:
        torch.manual_seed(
            cfg.seed
        )  # as the runner builds every rank: one seed for the weights and setup
        model = build_model(cfg.model, data.num_classes)
        m = get_method(method).from_dict(cfg.method_cfg)
        m.setup(model, data, torch.device("cpu"))
        dist = D.DistInfo(rank=rank, world=2, local_rank=rank) if rank >= 0 else D.SINGLE
        Trainer(cfg, model, m, data, torch.device("cpu"), tmp_path, show_progress=False, dist=dist)
        return m.sampler.buffer.x.clone()

    single, rank0, rank1 = buffer(-1), buffer(0), buffer(1)
    assert torch.equal(rank0, single)  # rank 0 keeps what a one-process run starts from
    assert not torch.equal(rank1, rank0) and (rank1 - rank0).abs().mean() > 0.1
    assert torch.equal(buffer(1), rank1)  # seeded: the same on every start
    assert (
        rank1.min() >= -1 and rank1.max() <= 1
    )  # drawn as the first fill is, on the [-1, 1] scale


# -- real 2-process runs ----------------------------------------------------------------------------


def _torchrun(method: str, out: Path, data_dir: Path, *sets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "bench",
        "run",
        "--method",
        method,
        "--preset",
        "smoke",
        "--device",
        "cpu",
        "-q",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        *[a for s in sets for a in ("--set", s)],
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "method, logged", [("pgd-at", "eps"), ("jem++", "e_gap"), ("ebjdat", "adv")]
)
def test_two_process_gloo_run_of_method(method, logged, tmp_path, shapes_data_dir):
    """Each at 2 steps of 16 images per rank, logged every step, no evaluation."""
    out = tmp_path / "results"
    proc = _torchrun(
        method,
        out,
        shapes_data_dir,
        "data.train_subset=64",
        "data.batch_size=16",
        "train.max_steps=2",
        "train.log_every=1",
        "train.eval_every=0",
        "eval.enabled=false",
        "model.norm=batch",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / "runs").iterdir()
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "complete"
    # weights and batch-norm statistics identical on both ranks (rank 0's buffers broadcast each step)
    assert record["distributed"]["ranks_in_sync"] is True
    history = record["training"]["history"]
    assert [h["step"] for h in history] == [1, 2] and all(logged in h for h in history)
    # images_per_s is the global figure: both ranks' 16 images per step over each window's seconds
    windows = sum(
        (h["step"] - prev) * 16 * 2 / h["images_per_s"]
        for h, prev in zip(history, [0] + [h["step"] for h in history])
    )
    assert windows == pytest.approx(record["timings"]["train_seconds"], rel=0.05)
    ckpt = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    if method != "pgd-at":  # each rank's replay buffer, drawn from its own first fill
        a, b = (s["sampler"]["buffer"]["x"] for s in ckpt["method_per_rank"])
        assert a.shape == b.shape and not torch.equal(a, b)


# -- resuming where fewer GPUs are visible than the checkpoint saved RNG states for -------------------


def _fake_cuda_states(n: int) -> list[torch.Tensor]:
    return [torch.full((16,), i, dtype=torch.uint8) for i in range(n)]


def test_cuda_rng_states_beyond_the_visible_gpus_are_named_not_restored():
    assert checkpoint.restore_cuda_rng([], 0) is None
    note = checkpoint.restore_cuda_rng(_fake_cuda_states(3), 0)
    assert (
        note.startswith(
            "the CUDA RNG state of GPUs 0-2 was not restored (the checkpoint holds 3, this host "
            "sees 0 GPUs)"
        )
        and "\n" not in note
    )
    assert "state of GPU 0 was not restored" in checkpoint.restore_cuda_rng(_fake_cuda_states(1), 0)


FAKE_STATES_NEED_NO_CUDA = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="fake CUDA RNG states would "
    "reach a real GPU; test_cuda_rng_restores_what_fits covers a GPU host",
)


@FAKE_STATES_NEED_NO_CUDA
def test_set_rng_state_restores_the_host_rngs_and_reports_the_cuda_ones(monkeypatch):
    import random

    import numpy as np

    saved = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.rand(), random.random())
    saved["cuda"] = _fake_cuda_states(4)  # written on a 4-GPU host
    note = checkpoint.set_rng_state(
        saved
    )  # this host: no CUDA (set_rng_state_all would fail on one with fewer)
    assert "GPUs 0-3 was not restored" in note
    assert (
        torch.equal(torch.rand(3), expected[0])
        and np.random.rand() == expected[1]
        and random.random() == expected[2]
    )
    _gpus(monkeypatch, 2)  # a host with 2 of the 4: the first two are restored, the rest named
    assert (
        "GPUs 2-3 was not restored (the checkpoint holds 4, this host sees 2 GPUs)"
        in checkpoint.set_rng_state(saved)
    )
    _gpus(monkeypatch, 4)
    assert checkpoint.set_rng_state(saved) is None


@FAKE_STATES_NEED_NO_CUDA
def test_resume_reports_unrestored_cuda_rng_states(shapes_data_dir, tmp_path, capsys):
    from bench.core.io import torch_save

    cfg = resolve_config(
        "ce",
        preset="smoke",
        device="cpu",
        overrides=["data.batch_size=8", "data.train_subset=64", f"data.data_dir={shapes_data_dir}"],
    )
    data = load_run_data(cfg)
    model = build_model(cfg.model, data.num_classes)
    m = get_method("ce").from_dict(cfg.method_cfg)
    tr = Trainer(cfg, model, m, data, torch.device("cpu"), tmp_path, show_progress=False)
    last = tr.save_checkpoint(periodic=False)
    ckpt = checkpoint.load(last)
    ckpt["rng"]["cuda"] = _fake_cuda_states(2)  # as a 2-GPU host writes it
    torch_save(ckpt, last)
    tr.load_checkpoint(last)
    err = capsys.readouterr().err
    assert err.strip() == (
        "resume from last.pt: the CUDA RNG state of GPUs 0-1 was not restored (the checkpoint "
        "holds 2, this host sees 0 GPUs); every training step reseeds the generators, so training "
        "does not depend on it"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_rng_restores_what_fits():
    """On a GPU host: a checkpoint from a host with two more GPUs restores this host's states and
    names the others (``torch.cuda.set_rng_state_all`` raised an invalid device ordinal)."""
    n = torch.cuda.device_count()
    torch.cuda.manual_seed_all(123)
    states = [torch.cuda.get_rng_state(i) for i in range(n)]
    torch.cuda.manual_seed_all(456)
    note = checkpoint.restore_cuda_rng(states + [states[0], states[0]], n)
    assert f"(the checkpoint holds {n + 2}, this host sees {n} GPU" in note
    assert all(torch.equal(torch.cuda.get_rng_state(i), states[i]) for i in range(n))
