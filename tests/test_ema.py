"""Model EMA (train.ema_decay): the average's formula, resume exactness, and that validation, the
end-of-run evaluation and `bench eval` all use the averaged weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import only_run

from bench.core.errors import BenchError
from bench.train.ema import ModelEMA


def test_the_average_follows_its_formula_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(model, 0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(2, 3, 5, 5))  # train mode: the running statistics move
        for name, p in model.named_parameters():
            expected[name] = 0.9 * expected[name] + 0.1 * p.detach()
        ema.update(model)
    state = model.state_dict()
    for k, v in ema.state_dict().items():
        if k in dict(model.named_parameters()):
            torch.testing.assert_close(v, expected[k])
        else:  # running mean / var / count: copied
            assert torch.equal(v, state[k])
    own = {k: v.clone() for k, v in state.items()}
    with ema.applied(model):
        assert torch.equal(model[0].weight, ema.state_dict()["0.weight"])
    assert all(torch.equal(model.state_dict()[k], own[k]) for k in own)  # put back


def test_decay_out_of_range_is_one_line(bench_cli, tiny_args, shapes_data_dir, tmp_path):
    with pytest.raises(BenchError, match=r"\(0, 1\)"):
        ModelEMA(nn.Linear(2, 2), 1.0)
    out = tmp_path / "r"
    res = bench_cli(
        "run", "--method", "ce", *tiny_args(out, shapes_data_dir), "--set", "train.ema_decay=1.5"
    )
    assert (
        res.exit_code == 2
        and "train.ema_decay must lie in [0, 1)" in res.stderr
        and not (out / "runs").exists()
    )


def test_resume_continues_the_average_exactly(shapes_data_dir, tmp_path):
    from bench.data import load_run_data
    from bench.models import build_model
    from bench.run.resolve import resolve_config
    from bench.train.trainer import Trainer
    from methods import get_method

    def trainer(run_dir):
        cfg = resolve_config(
            "ce",
            preset="smoke",
            device="cpu",
            overrides=[
                f"data.data_dir={shapes_data_dir}",
                "data.train_subset=64",
                "data.batch_size=16",
                "train.max_steps=6",
                "train.ema_decay=0.8",
                "train.eval_every=0",
                "eval.enabled=false",
                "train.checkpoint_every=3",
            ],
        )
        data = load_run_data(cfg)
        torch.manual_seed(0)
        model = build_model(cfg.model, data.num_classes)
        m = get_method("ce").from_dict(cfg.method_cfg)
        m.setup(model, data, torch.device("cpu"))
        return Trainer(cfg, model, m, data, torch.device("cpu"), run_dir, show_progress=False)

    whole = trainer(tmp_path / "whole")
    whole.fit()
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    b_run = tmp_path / "halves"
    first = trainer(b_run)
    first.fit()  # writes step-3 and last (step 6); go back to step 3 as a resume would
    resumed = trainer(b_run)
    resumed.load_checkpoint(b_run / "checkpoints" / "step-00000003.pt")
    assert resumed.state.step == 3
    resumed.fit()
    b = torch.load(b_run / "checkpoints" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["ema_model"][k], b["ema_model"][k]), k
    moved = [
        k
        for k in a["model"]
        if a["model"][k].is_floating_point() and not torch.equal(a["model"][k], a["ema_model"][k])
    ]
    assert moved  # the average differs from the raw weights


def test_the_run_and_bench_eval_report_the_averaged_weights(
    bench_cli, tiny_args, shapes_data_dir, tmp_path
):
    out = tmp_path / "r"
    res = bench_cli(
        "run",
        "--method",
        "ce",
        *tiny_args(out, shapes_data_dir, steps=6),
        "--set",
        "train.ema_decay=0.5",
        "--set",
        "optim.lr=0.2",
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(out)
    assert rec["evaluated_checkpoint"]["weights"] == "ema (decay 0.5)"
    end_of_run = rec["evaluations"]["quick"]["clean"]
    again = bench_cli(
        "eval",
        run_dir.name,
        "--out",
        out,
        "--protocol",
        "quick",
        "--metrics",
        "clean",
        "-n",
        str(end_of_run["n_examples"]),
        "-q",
    )
    assert again.exit_code == 0, again.stderr
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["evaluations"]["quick"]["clean"]["loss"] == pytest.approx(
        end_of_run["loss"], rel=1e-6
    )

    from bench.run.saved_runs import load_run_model

    model, *_ = load_run_model(run_dir, torch.device("cpu"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], ckpt["ema_model"][k]) for k in state)
    assert any(
        not torch.equal(ckpt["model"][k], ckpt["ema_model"][k])
        for k in state
        if ckpt["model"][k].is_floating_point()
    )
