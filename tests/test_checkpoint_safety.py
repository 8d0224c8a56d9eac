"""A checkpoint never runs code: every load is weights_only, and a file that needs other Python
objects is refused with one line, whichever command reads it."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
import torch

from bench.core.errors import BenchError
from bench.core.io import torch_save
from bench.train import checkpoint


class Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted_run(tmp_path, complete_run):
    results = tmp_path / "results"
    run_dir = results / "runs" / complete_run.name
    shutil.copytree(complete_run, run_dir)
    marker = tmp_path / "PAYLOAD-RAN"
    good = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    torch.save(
        {**good, "extra": Payload(marker)}, run_dir / "checkpoints" / "last.pt"
    )  # looks like ours
    rec = json.loads((run_dir / "record.json").read_text())
    rec["status"] = "interrupted"  # so that --resume reads the checkpoint
    (run_dir / "record.json").write_text(json.dumps(rec))
    return results, run_dir, marker


@pytest.mark.parametrize("command", ["resume", "eval", "sample"])
def test_a_crafted_checkpoint_runs_nothing_and_is_refused(crafted_run, bench_cli, command):
    results, run_dir, marker = crafted_run
    args = {
        "resume": ["run", "--resume", run_dir.name, "--out", str(results), "-q"],
        "eval": [
            "eval",
            run_dir.name,
            "--out",
            str(results),
            "--protocol",
            "quick",
            "-n",
            "8",
            "-q",
        ],
        "sample": ["sample", run_dir.name, "--results", str(results), "-n", "2", "--steps", "1"],
    }[command]
    res = bench_cli(*args)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert res.exit_code == 2, res.stderr
    assert len(res.error_lines) == 1 and "is not a trilemma-bench checkpoint" in res.error_lines[0]


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    checkpoint.save(tmp_path / "c.pt", {"model": {"w": torch.ones(3)}, "config_digest": "abc"})
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)  # no allow-listed globals needed
    expected = (np.random.rand(), random.random(), torch.rand(4).tolist())
    checkpoint.set_rng_state(ckpt["rng"])  # every generator back where the checkpoint was taken
    assert (np.random.rand(), random.random(), torch.rand(4).tolist()) == expected


def test_checkpoints_of_format_1_still_load(tmp_path):
    """Format 1 stored numpy's RNG state as an array: read through numpy's allow-listed array reconstruction."""
    np.random.seed(7)
    old = {
        "format": 1,
        "model": {"w": torch.ones(2)},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    torch_save(old, tmp_path / "old.pt")
    expected = np.random.rand()
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "old.pt")["rng"])
    assert np.random.rand() == expected
    with pytest.raises(BenchError, match="corrupt"):
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
        checkpoint.load(tmp_path / "bad.pt")
