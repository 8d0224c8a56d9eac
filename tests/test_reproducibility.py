"""Energy methods are reproducible on several threads, so their resume is exact.

The replay buffer's write ``x[idx] = v`` with a repeated index had no defined winner on several
threads (two identical jem++ runs ended with different weights); it now gives every write to one
index the value of its last occurrence. The chaos test kills jem++, ebjdat and ebjdat-sada-jem
smoke runs with SIGKILL at three random points, resumes each time, and compares weights and
replay buffer bit for bit with an uninterrupted run, on two threads. The default suite runs the
ebjdat case; ``make test-extended`` (``pytest -m extended``) runs the other two (about a minute each).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env

from bench.sampling.buffer import ReplayBuffer


def test_buffer_write_keeps_the_last_occurrence_on_several_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(0)
        for _ in range(30):
            buf = ReplayBuffer(40, (3, 16, 16), 10, init="uniform", reinit_freq=0.0)
            idx = torch.randint(0, 12, (256,), generator=g)  # many repeats
            x = torch.randn(256, 3, 16, 16, generator=g)
            expected = buf.x.clone()
            for i, j in enumerate(idx.tolist()):  # the references' sequential semantics
                expected[j] = x[i]
            buf.write(idx, x)
            assert torch.equal(buf.x, expected)
    finally:
        torch.set_num_threads(threads)


STEPS = 8
SETTINGS = [
    "--preset",
    "smoke",
    "--seed",
    "3",
    "-q",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    f"train.max_steps={STEPS}",
    "--set",
    "eval.enabled=false",
    "--set",
    "method.sampler.buffer_size=128",
    "--set",
    "data.train_subset=256",
]


def _env() -> dict[str, str]:
    return subprocess_env({"OMP_NUM_THREADS": "2"})


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *map(str, args)],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _kill_after_checkpoint(args: list[str], run_dir_of, after_step: int, rng: random.Random) -> int:
    """Start ``bench ARGS``, SIGKILL it a random moment after it checkpoints past ``after_step``;
    the step it reached."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *map(str, args)],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        run_dir = run_dir_of()
        last = run_dir / "checkpoints" / "last.pt" if run_dir else None
        if last is not None and last.is_file():
            try:
                step = torch.load(last, weights_only=True)["step"]
            except Exception:  # being replaced right now
                step = -1
            if step > after_step:
                time.sleep(
                    rng.uniform(0.0, 0.6)
                )  # anywhere: mid-step, mid-checkpoint, mid-record-write
                proc.send_signal(signal.SIGKILL)
                proc.communicate(timeout=60)
                return step
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no checkpoint past step {after_step}: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        pytest.param("jem++", marks=pytest.mark.extended),
        "ebjdat",
        pytest.param("ebjdat-sada-jem", marks=pytest.mark.extended),
    ],
)
def test_kill_9_at_three_random_points_then_resume_is_bit_identical(
    method, tmp_path, shapes_data_dir
):
    data = ["--data-dir", shapes_data_dir]
    full = tmp_path / "full"
    res = _run("run", "--method", method, *SETTINGS, *data, "--out", full)
    assert res.returncode == 0, res.stderr[-2000:]
    (ref_dir,) = (full / "runs").iterdir()

    chaos = tmp_path / "chaos"

    def run_dir():
        runs = list((chaos / "runs").iterdir()) if (chaos / "runs").is_dir() else []
        return runs[0] if runs else None

    rng = random.Random(f"{method}-chaos")
    step = _kill_after_checkpoint(
        ["run", "--method", method, *SETTINGS, *data, "--out", chaos], run_dir, 0, rng
    )
    kills = 1
    while kills < 3 and step < STEPS - 2:
        step = _kill_after_checkpoint(
            ["run", "--resume", run_dir().name, "--out", chaos, "-q"], run_dir, step, rng
        )
        kills += 1
    res = _run("run", "--resume", run_dir().name, "--out", chaos, "-q")
    assert res.returncode == 0, res.stderr[-2000:]

    a = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run_dir() / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), (
        "weights differ after resume"
    )
    buf_a, buf_b = a["method"]["sampler"]["buffer"]["x"], b["method"]["sampler"]["buffer"]["x"]
    assert torch.equal(buf_a, buf_b), "replay buffers differ after resume"
    assert len(json.loads((run_dir() / "record.json").read_text())["training"]["resumes"]) == kills


@pytest.mark.parametrize(
    "method", ["ce", "pgd-at", "trades", "jem", "jem++", "ebjdat", "ebjdat-jem", "ebjdat-sada-jem"]
)
def test_train_deterministic_runs_every_method_under_deterministic_algorithms(
    method, bench_cli, tiny_args, tmp_path, shapes_data_dir, monkeypatch
):
    from methods import get_method

    cls = get_method(method)
    seen = []
    step = cls.training_step

    def spy(self, *a, **k):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return step(self, *a, **k)

    monkeypatch.setattr(cls, "training_step", spy)
    res = bench_cli(
        "run",
        "--method",
        method,
        *tiny_args(tmp_path / "r", shapes_data_dir, steps=2),
        "--set",
        "train.deterministic=true",
        "--set",
        "eval.enabled=false",
        "--set",
        "method.sampler.buffer_size=64" if "jem" in method else "train.log_every=1",
    )
    assert res.exit_code == 0, res.stderr
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
