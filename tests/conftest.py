"""Shared test fixtures and helpers.

Tests run with one torch thread (``BENCH_TEST_THREADS`` changes it), subprocesses too.

Fixture names are a stable interface (other test modules use them):

``repo_root``          Path of the repository root.
``shapes_data_dir``    (session) a folder holding the shapes10 cache (10k/2k images), generated once
                       per session (~16 s); pass it as ``--data-dir`` or ``DataConfig.data_dir``.
``results_root``       a fresh, empty results root (``--out``) under ``tmp_path``.
``bench_cli``          ``bench_cli(*args) -> CliResult``: the real ``bench`` entry point
                       (``bench.cli.main``, error formatting and exit codes included) run
                       in-process; ``CliResult`` has ``exit_code``, ``stdout``, ``stderr``.
``bench_subprocess``   ``bench_subprocess(*args, env=None, timeout=300) -> CliResult``: the same
                       through ``python -m bench`` in a child process (use for signals, plugins
                       and concurrency).
``tiny_args``          ``tiny_args(out, data_dir, steps=4, seed=0)``: the ``bench run`` options of
                       a tiny smoke run (128 training images, batch 32, ``steps`` steps, 32
                       evaluation images, -q) as a list, to append after ``--method``; options
                       given after them win.
``tiny_overrides``     the same as ``--set`` strings for ``resolve_config(overrides=...)``.
``complete_run``       (session) the directory of one finished tiny ``ce`` run (do not modify it;
                       copy it first), under the results root ``complete_run.parent.parent``.
``cifar_npz``          path of the real CIFAR-10 sample ``../shared/data/cifar10-train-5k.npz``
                       relative to the repo root; the test is skipped when it is absent.
``CIFAR_NPZ``          (module constant) the same path, for ``skipif`` marks.

Plain helpers (``from conftest import ...``): ``REPO_ROOT``, ``make_tiny_args`` (= ``tiny_args``),
``run_subprocess`` (= ``bench_subprocess``), ``subprocess_env()`` (the environment for a
``python -m bench`` child: repo on PYTHONPATH, same thread count), ``CliResult.error_lines``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# One intra-op thread: the models under test are tiny, and on a shared 2-core machine two
# OpenMP threads per process spin against the other processes (measured: 8x slower per step).
# Subprocesses get the same count, so in-process and subprocess runs compute identical bits.
torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parent.parent
# property tests draw this many times their default examples (`make test-extended`: 10)
FUZZ_SCALE = int(os.environ.get("BENCH_FUZZ_SCALE", "1"))


def fuzz_examples(n: int) -> int:
    return n * FUZZ_SCALE


CIFAR_NPZ = REPO_ROOT.parent / "shared" / "data" / "cifar10-train-5k.npz"

TINY_SETTINGS = (
    "data.train_subset=128",
    "data.batch_size=32",
    "train.eval_examples=32",
    "eval.n_examples=32",
    "eval.batch_size=32",
)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(autouse=True, scope="session")
def python_sigint_handler():
    """Give the test process Python's own Ctrl-C handler, as an interactive `bench run` has.

    A background job of a non-interactive shell (``cmd &``, as some CI harnesses start jobs)
    begins with SIGINT ignored, and Python keeps it ignored; the tests that press Ctrl-C
    in-process would then see nothing happen.
    """
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory) -> Path:
    """A data dir with the shapes10 cache, made once per session."""
    from bench.data.shapes import cache_path, load_arrays

    d = tmp_path_factory.mktemp("shapes10-data")
    local = cache_path(
        REPO_ROOT / "data"
    )  # a developer's cache (git-ignored): same bytes, saves the 16 s
    if local.is_file():
        shutil.copy(local, cache_path(d))
    arrays = load_arrays(d)  # validates the copied cache (shape check) or generates it
    assert arrays["x_train"].shape == (10_000, 32, 32, 3)
    return d


@pytest.fixture
def results_root(tmp_path) -> Path:
    return tmp_path / "results"


def _run_main(args: list[str]) -> CliResult:
    from click.testing import CliRunner

    from bench.cli import main

    runner = CliRunner()
    old_argv = sys.argv
    code = 0
    with runner.isolation() as (out, err, *_):
        sys.argv = ["bench", *map(str, args)]
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = old_argv
            sys.stdout.flush()
            sys.stderr.flush()
        return CliResult(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def bench_cli():
    return lambda *args: _run_main(list(args))


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    env.update(extra or {})
    return env


def run_subprocess(
    *args, env: dict[str, str] | None = None, timeout: float = 300, cwd=None
) -> CliResult:
    p = subprocess.run(
        [sys.executable, "-m", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(env),
        timeout=timeout,
        cwd=cwd or REPO_ROOT,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def bench_subprocess():
    return run_subprocess


def make_tiny_args(out, data_dir, steps: int = 4, seed: int = 0) -> list[str]:
    args = [
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--seed",
        str(seed),
        "-q",
        "--set",
        f"train.max_steps={steps}",
    ]
    for s in TINY_SETTINGS:
        args += ["--set", s]
    return args


@pytest.fixture(scope="session")
def tiny_args():
    return make_tiny_args


@pytest.fixture(scope="session")
def tiny_overrides(shapes_data_dir):
    return [*TINY_SETTINGS, "train.max_steps=4", f"data.data_dir={shapes_data_dir}"]


@pytest.fixture(scope="session")
def complete_run(tmp_path_factory, shapes_data_dir) -> Path:
    out = tmp_path_factory.mktemp("complete-run") / "results"
    res = _run_main(["run", "--method", "ce", *make_tiny_args(out, shapes_data_dir)])
    assert res.exit_code == 0, res.stderr
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


@pytest.fixture
def cifar_npz() -> Path:
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"real CIFAR-10 sample not found at {CIFAR_NPZ}")
    return CIFAR_NPZ


def trainer_for(cfg, tmp, method_obj=None):
    """A CPU Trainer for a resolved config (``RunConfig``), as the runner builds one: the run's data,
    the model built under seed 0, the method set up on it (``method_obj`` replaces the registered one)."""
    from bench.data import load_run_data
    from bench.models import build_model
    from bench.train.trainer import Trainer
    from methods import get_method

    data = load_run_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_classes)
    m = method_obj or get_method(cfg.method).from_dict(cfg.method_cfg)
    m.setup(model, data, torch.device("cpu"))
    return Trainer(cfg, model, m, data, torch.device("cpu"), tmp, show_progress=False)


def step_batch(tr, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prepared batch (x, y) that ``tr.train_step(step)`` will see (it reseeds the same way)."""
    from bench.train.trainer import step_seed

    epoch, index = divmod(step, tr.steps_per_epoch)
    torch.manual_seed(step_seed(tr.cfg.seed, step, 0))
    x_u8, y = tr.batches.streams[0].batch(epoch, index)
    return tr.batches.prepare(x_u8), y


def smoke_trainer(method: str, overrides, tmp):
    """:func:`trainer_for` the method's ``smoke`` config at batch 16 on the CPU, with ``overrides``."""
    from bench.run.resolve import resolve_config

    return trainer_for(
        resolve_config(
            method, preset="smoke", device="cpu", overrides=["data.batch_size=16", *overrides]
        ),
        tmp,
    )


def only_run(out) -> tuple[Path, dict]:
    """The one run directory under ``<out>/runs`` and its record (fails if there is not exactly one)."""
    import json

    (run_dir,) = (Path(out) / "runs").iterdir()
    return run_dir, json.loads((run_dir / "record.json").read_text())
