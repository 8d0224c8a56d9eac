"""The `jem` and `jem++` methods end to end (tiny runs), resume with the replay buffer, `bench sample`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench.core.errors import InterruptedRun
from bench.run.resolve import resolve_config
from bench.run.runner import resume_run, start_run
from bench.train import checkpoint
from methods._energy import JEMFamily

SMALL_SAMPLER = (
    "method.sampler.steps=2",
    "method.sampler.in_steps=2",
    "method.sampler.buffer_size=64",
    "method.grid_size=9",
    "eval.enabled=false",
)


def tiny_cfg(method, tiny_overrides, tmp_path, *extra):
    return resolve_config(
        method,
        preset="smoke",
        overrides=[
            *tiny_overrides,
            *SMALL_SAMPLER,
            f"method.sampler.cache_dir={tmp_path / 'cache'}",
            *extra,
        ],
    )


def test_reference_defaults_are_recorded():
    jem = resolve_config("jem", preset="paper")
    s = jem.method_cfg["sampler"]
    assert (
        s["kind"],
        s["steps"],
        s["step_size"],
        s["noise_std"],
        s["clamp"],
        s["init"],
        s["mode"],
    ) == ("sgld", 20, 1.0, 0.01, False, "uniform", "eval")
    assert (jem.optim.name, jem.optim.lr, jem.optim.warmup_steps, jem.data.batch_size) == (
        "adam",
        1e-4,
        1000,
        64,
    )
    assert (jem.model.arch, jem.model.norm, jem.model.activation, jem.data.noise_std) == (
        "wrn-28-10",
        "none",
        "leaky_relu",
        0.015,
    )
    assert jem.train.epochs == 150 and jem.method_cfg["energy_l2"] == 0.0
    pp = resolve_config("jem++", preset="paper")
    s = pp.method_cfg["sampler"]
    assert (
        s["kind"],
        s["steps"],
        s["in_steps"],
        s["pyld_lr"],
        s["eps"],
        s["step_size"],
        s["noise_std"],
        s["init"],
        s["mode"],
        s["buffer_size"],
        s["reinit_freq"],
    ) == ("pyld", 10, 5, 0.2, 1.0, 0.0, 0.0, "informative", "train", 10000, 0.05)
    assert (
        pp.optim.name,
        pp.optim.lr,
        pp.optim.warmup_steps,
        pp.model.norm,
        pp.model.bn_momentum,
    ) == ("sgd", 0.1, 1000, "batch", 0.9)


@pytest.mark.parametrize("method", ["jem", "jem++"])
def test_tiny_run_logs_energies_and_saves_the_buffer(method, tiny_overrides, tmp_path):
    cfg = tiny_cfg(
        method, tiny_overrides, tmp_path, "train.log_every=2", "train.checkpoint_every=2"
    )
    res = start_run(cfg, out=tmp_path / "results", show_progress=False)
    rec = res.record
    assert rec["status"] == "complete"
    hist = rec["training"]["history"]
    assert len(hist) == 2
    for h in hist:
        for k in ("loss", "px", "ce", "e_data", "e_sample", "e_gap", "e_start", "acc"):
            assert math.isfinite(h[k]), (k, h)
        assert h["e_gap"] == pytest.approx(h["e_sample"] - h["e_data"], abs=1e-5)
        assert h["loss"] == pytest.approx(h["px"] + h["ce"], abs=1e-4)
    grid = res.run_dir / rec["artifacts"]["buffer_grid"]
    assert grid.name == "buffer-step-00000004.png" and grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert (
        Image.open(grid).size == (2 * (3 * 34 + 2),) * 2
    )  # 3 x 3 tiles of 32 px, 2 px gaps, scaled x2
    ckpt = checkpoint.load(res.run_dir / "checkpoints" / "last.pt")
    buf = ckpt["method"]["sampler"]["buffer"]
    assert buf["x"].shape == (64, 3, 32, 32) and buf["init"] == cfg.method_cfg["sampler"]["init"]
    if method == "jem++":
        assert (
            buf["x"].abs().max() <= 1.0
        )  # PYLD clamps to the image range; informative starts are clamped
        assert list((tmp_path / "cache").glob("shapes10-*.pt"))  # the Gaussian fit was cached


def test_energy_penalty_is_an_option(tiny_overrides, tmp_path):
    cfg = tiny_cfg("jem", tiny_overrides, tmp_path, "method.energy_l2=0.1", "train.log_every=4")
    rec = start_run(cfg, out=tmp_path / "results", show_progress=False).record
    assert rec["config"]["method_cfg"]["energy_l2"] == 0.1
    (h,) = rec["training"]["history"]
    assert h["loss"] == pytest.approx(h["px"] + h["ce"] + 0.1 * h["energy_sq"], rel=1e-5)
    assert h["energy_sq"] > 0


def test_resume_continues_with_the_same_replay_buffer(tiny_overrides, tmp_path, monkeypatch):
    extra = ("train.checkpoint_every=2", "train.log_every=2")
    full = start_run(
        tiny_cfg("jem++", tiny_overrides, tmp_path, *extra), out=tmp_path / "a", show_progress=False
    )

    original = JEMFamily.training_step

    def interrupt_at_step_3(self, model, x, y, ctx):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return original(self, model, x, y, ctx)

    monkeypatch.setattr(JEMFamily, "training_step", interrupt_at_step_3)
    with pytest.raises(InterruptedRun):
        start_run(
            tiny_cfg("jem++", tiny_overrides, tmp_path, *extra),
            out=tmp_path / "b",
            show_progress=False,
        )
    monkeypatch.setattr(JEMFamily, "training_step", original)
    (run_b,) = (tmp_path / "b" / "runs").iterdir()
    assert json.loads((run_b / "record.json").read_text())["status"] == "interrupted"
    assert checkpoint.load(run_b / "checkpoints" / "last.pt")["step"] == 2
    resumed = resume_run(str(run_b), out=tmp_path / "b", show_progress=False)
    assert resumed.record["status"] == "complete"
    a = checkpoint.load(full.run_dir / "checkpoints" / "last.pt")
    b = checkpoint.load(run_b / "checkpoints" / "last.pt")
    assert torch.equal(a["method"]["sampler"]["buffer"]["x"], b["method"]["sampler"]["buffer"]["x"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


# -- bench sample ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jem_run(tmp_path_factory, shapes_data_dir):
    out = tmp_path_factory.mktemp("jem-run") / "results"
    overrides = [
        "data.train_subset=128",
        "data.batch_size=32",
        "train.max_steps=4",
        f"data.data_dir={shapes_data_dir}",
        *SMALL_SAMPLER,
    ]
    res = start_run(
        resolve_config("jem", preset="smoke", overrides=overrides), out=out, show_progress=False
    )
    return res.run_dir


def test_bench_sample_writes_grid_and_npz(bench_cli, jem_run, tmp_path):
    npz = tmp_path / "s.npz"
    res = bench_cli(
        "sample",
        str(jem_run),
        "-n",
        "10",
        "--steps",
        "3",
        "--npz",
        str(npz),
        "--grid",
        str(tmp_path / "g.png"),
    )
    assert res.exit_code == 0, res.stderr
    assert "10 samples (unconditional), sgld 3 steps from fresh starts" in res.stdout
    d = np.load(npz)
    assert d["x"].shape == (10, 32, 32, 3) and d["x"].dtype == np.uint8 and "y" not in d
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"

    res = bench_cli(
        "sample",
        str(jem_run),
        "-n",
        "6",
        "--class",
        "3",
        "--buffer",
        "saved",
        "--steps",
        "1",
        "--sampler",
        "pyld",
        "--npz",
        str(npz),
    )
    assert res.exit_code == 0, res.stderr
    d = np.load(npz)
    assert d["x"].shape == (6, 32, 32, 3) and d["y"].tolist() == [3] * 6
    assert list((jem_run / "samples").glob("sample-saved-pyld-1steps-class3-seed0.png"))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["-n", "0"], "-n must be a positive"),
        (["--class", "10"], "out of range"),
        (["--class", "zebra"], "neither a class index nor a class name"),
        (["--npz", "x.png"], "--npz 'x.png' must name an .npz file"),
        (
            ["--out", "x.npz"],
            "--out is the results folder, as in every command; write the samples with --npz x.npz",
        ),
        (["--steps", "-1"], "--steps must be >= 0"),
        (
            ["--sampler", "langevin-9000"],
            "--sampler 'langevin-9000' is not a sampler kind; choose one of: pyld, sgld",
        ),
    ],
)
def test_bench_sample_bad_input_is_one_line(bench_cli, jem_run, args, needle):
    res = bench_cli("sample", str(jem_run), *args)
    assert res.exit_code == 2 and len(res.error_lines) == 1 and needle in res.error_lines[0], (
        res.stderr
    )


def test_bench_sample_saved_buffer_needs_one(bench_cli, complete_run):
    res = bench_cli("sample", str(complete_run), "--buffer", "saved")
    assert res.exit_code == 2 and "saved no replay buffer" in res.error_lines[0]


def test_shared_batch_variant_and_conditional_draw(tmp_path):
    from test_sampling import toy_data

    from bench.core.config import ModelConfig
    from bench.models import build_model
    from methods import StepContext, get_method

    data = toy_data(hw=16)
    method = get_method("jem").from_dict(
        {
            "separate_px_batch": False,
            "sampler": {
                "steps": 2,
                "buffer_size": 30,
                "conditional": True,
                "init": "informative",
                "cache_dir": "off",
            },
        }
    )
    assert method.extra_batches == 0
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet8", norm="none"), 3)
    method.setup(model, data, torch.device("cpu"))
    x, y = data.x_train[:8].float() / 255, data.y_train[:8]
    import contextlib

    ctx = StepContext(
        step=0, epoch=0, device=torch.device("cpu"), num_classes=3, autocast=contextlib.nullcontext
    )
    terms = method.training_step(model, x, y, ctx)
    assert {"px", "ce", "e_data", "e_sample", "e_gap", "e_start", "acc"} <= set(terms)
    assert terms["px"].requires_grad and terms["ce"].requires_grad
    # a conditional buffer: x|y draws only touch the asked class's block
    before = method.sampler.buffer.x.clone()
    method.sampler.draw(model, 4, y=torch.full((4,), 1))
    changed = (method.sampler.buffer.x != before).flatten(1).any(1).nonzero().squeeze(1)
    assert changed.numel() > 0 and torch.all((changed >= 10) & (changed < 20))
