"""Data-parallel training: batch sharding, and a real 2-process gloo run through torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from bench import checkpoint
from bench.data import BatchStream

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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "bench",
           "run", "--method", "ce", "--preset", "smoke", "--device", "cpu", "-q", "--out", str(out),
           "--data-dir", str(shapes_data_dir), "--set", "train.epochs=1", "--set", "train.checkpoint_every=2",
           "--set", "eval.n_examples=64"]
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
    assert all(h["loss"] == h["loss"] for h in record["training"]["history"] if "loss" in h)  # finite, logged
    assert record["evaluations"]["quick"]["clean"]["n_examples"] == 64
    ckpt = checkpoint.load(runs[0] / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["method_per_rank"]) == 2
    # only rank 0 wrote: exactly one record, no stray temporary files
    assert sorted(p.name for p in runs[0].iterdir() if p.is_file()) == ["record.json"]
