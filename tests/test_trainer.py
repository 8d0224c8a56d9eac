"""The shared training loop: loss weighting and logging, LR schedule, checkpoints, run records."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.core import io
from bench.core.config import OptimConfig
from bench.core.errors import BenchError
from bench.data import load_run_data, to_float
from bench.run.resolve import resolve_config
from bench.run.runner import _build, start_run
from bench.train.trainer import Trainer, lr_factor
from methods import METHODS, Method, register_method


# -- LR schedule: a pure function of the step ---------------------------------------------------------
def test_lr_constant_and_warmup():
    c = OptimConfig(schedule="constant", warmup_steps=10)
    assert [lr_factor(c, s, 100, 10, 10) for s in (0, 4, 9, 10, 99)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0]
    )
    assert lr_factor(replace(c, warmup_steps=0), 0, 100, 10, 10) == 1.0


def test_lr_cosine():
    c = OptimConfig(schedule="cosine", warmup_steps=0)
    vals = [lr_factor(c, s, 100, 10, 10) for s in range(101)]
    assert (
        vals[0] == 1.0
        and vals[50] == pytest.approx(0.5)
        and vals[100] == pytest.approx(0.0, abs=1e-12)
    )
    assert vals[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    w = replace(c, warmup_steps=20)
    assert lr_factor(w, 4, 100, 10, 10) == pytest.approx(
        5 / 20 * 0.5 * (1 + math.cos(math.pi * 4 / 100))
    )


def test_lr_step_milestones_fractions_and_epochs():
    frac = OptimConfig(schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    # 10 epochs of 10 steps: fractions -> epochs 5 and 7.5 -> steps 50 and 75
    got = {s: lr_factor(frac, s, 100, 10, 10) for s in (0, 49, 50, 74, 75, 99)}
    assert got == pytest.approx({0: 1, 49: 1, 50: 0.1, 74: 0.1, 75: 0.01, 99: 0.01})
    absolute = OptimConfig(schedule="step", milestones=[3, 6], gamma=0.2)
    got = {s: lr_factor(absolute, s, 100, 10, 10) for s in (29, 30, 59, 60)}
    assert got == pytest.approx({29: 1, 30: 0.2, 59: 0.2, 60: 0.04})
    mixed = OptimConfig(schedule="step", milestones=[0.2, 8], gamma=0.5)
    assert [lr_factor(mixed, s, 100, 10, 10) for s in (19, 20, 80)] == pytest.approx([1, 0.5, 0.25])
    # pure: the same arguments always give the same value, in any order
    forward = [lr_factor(frac, s, 100, 10, 10) for s in range(100)]
    backward = [lr_factor(frac, s, 100, 10, 10) for s in reversed(range(100))][::-1]
    assert forward == backward and len(set(forward)) == 3  # no state advanced by a call


# -- a method with several weighted terms -------------------------------------------------------------
@pytest.fixture
def weighted_method():
    @register_method("test-weighted")
    class Weighted(Method):
        def loss_weights(self):
            return {"ce": 1.0, "sq": 0.25, "off": 0.0}

        def training_step(self, model, x, y, ctx):
            logits = model(x)
            return {
                "ce": F.cross_entropy(logits, y),
                "sq": logits.pow(2).mean(),
                "off": logits.abs().mean() + 100.0,  # weight 0: must not touch the loss
                "acc": (logits.argmax(1) == y).float().mean(),
            }

    yield Weighted
    METHODS.unregister("test-weighted")


def _cfg(shapes_data_dir, method, *extra):
    return resolve_config(
        method,
        preset="smoke",
        seed=0,
        device="cpu",
        overrides=[
            f"data.data_dir={shapes_data_dir}",
            "data.train_subset=64",
            "data.batch_size=16",
            "data.augment=false",
            "train.eval_every=0",
            "eval.enabled=false",
            "optim.momentum=0",
            "optim.weight_decay=0",
            "optim.schedule=constant",
            "train.log_every=1",
            *extra,
        ],
    )


def test_loss_terms_are_weighted_summed_and_logged(weighted_method, shapes_data_dir, tmp_path):
    cfg = _cfg(shapes_data_dir, "test-weighted", "train.max_steps=3", "optim.lr=0.05")
    data = load_run_data(cfg)
    device = torch.device("cpu")
    model, method = _build(cfg, data, device)
    # the reference: the same first step by hand
    ref, _ = _build(cfg, data, device)
    trainer = Trainer(cfg, model, method, data, device, tmp_path / "run", show_progress=False)
    x_u8, y = trainer.batches.streams[0].batch(0, 0)
    logits = ref(to_float(x_u8))
    loss = F.cross_entropy(logits, y) + 0.25 * logits.pow(2).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    expected = [p.detach() - 0.05 * g for p, g in zip(ref.parameters(), grads)]

    trainer.set_lr(0)
    logged = trainer.train_step(0)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-4, atol=1e-6)
    assert float(logged["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert float(logged["off"]) > 100

    trainer.state.step = 1
    state = trainer.fit()
    hist = state.history
    assert [h["step"] for h in hist] == [2, 3]
    for h in hist:
        assert {"loss", "ce", "sq", "off", "acc", "lr", "epoch", "images_per_s"} <= set(h)
        assert h["loss"] == pytest.approx(h["ce"] + 0.25 * h["sq"], abs=2e-6) and h["off"] > 100
        assert h["lr"] == 0.05


def test_missing_loss_term_is_a_clear_error(shapes_data_dir, tmp_path):
    @register_method("test-missing-term")
    class Missing(Method):
        def training_step(self, model, x, y, ctx):
            return {"cee": F.cross_entropy(model(x), y)}

    try:
        cfg = _cfg(shapes_data_dir, "test-missing-term", "train.max_steps=1")
        with pytest.raises(
            BenchError, match=r"returned no loss term\(s\) \['ce'\]; it returned \['cee'\]"
        ):
            start_run(cfg, out=tmp_path, show_progress=False)
    finally:
        METHODS.unregister("test-missing-term")


def test_fractional_milestones_follow_max_steps(shapes_data_dir, tmp_path):
    """With train.max_steps the run is max_steps long, so milestone 0.5 falls at half of it."""
    cfg = _cfg(
        shapes_data_dir,
        "ce",
        "train.max_steps=8",
        "train.epochs=10",
        "optim.schedule=step",
        "optim.milestones=[0.5]",
        "optim.lr=0.1",
        "optim.gamma=0.1",
    )
    res = start_run(cfg, out=tmp_path, show_progress=False)
    lrs = [h["lr"] for h in res.record["training"]["history"]]  # entry k: the lr of step k-1
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 4)


# -- checkpoints ------------------------------------------------------------------------------------------
class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("boom while writing")


def test_atomic_writes_keep_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    io.torch_save({"w": torch.ones(3)}, path)
    with pytest.raises(RuntimeError, match="boom"):
        io.torch_save({"w": torch.zeros(3), "bad": _Unpicklable()}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    rec = tmp_path / "record.json"
    io.write_json(rec, {"a": 1})
    with pytest.raises(TypeError):
        io.write_json(rec, {"a": object()})
    assert json.loads(rec.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "record.json"]
    io.write_json(rec, {"nan": float("nan"), "t": torch.tensor([1.5]), "p": Path("x")})
    assert json.loads(rec.read_text()) == {"nan": "nan", "t": [1.5], "p": "x"}


def test_checkpoints_contents_and_pruning(shapes_data_dir, tmp_path):
    cfg = _cfg(
        shapes_data_dir,
        "ce",
        "train.max_steps=7",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=2",
    )
    res = start_run(cfg, out=tmp_path, show_progress=False)
    ck = res.run_dir / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == [
        "last.pt",
        "step-00000004.pt",
        "step-00000006.pt",
    ]
    last = torch.load(ck / "last.pt", weights_only=False)
    assert last["step"] == 7 and last["config_digest"] == cfg.digest()
    assert {"model", "optimizer", "method", "state", "rng", "format"} <= set(last)
    assert torch.load(ck / "step-00000006.pt", weights_only=False)["step"] == 6
    assert len(last["state"]["history"]) == 7
    # the checkpointed weights are the final weights used for evaluation
    from bench.run.saved_runs import load_run_model

    model, *_ = load_run_model(res.run_dir, torch.device("cpu"))
    for k, v in last["model"].items():
        assert torch.equal(model.state_dict()[k], v)


# -- the run record -----------------------------------------------------------------------------------------
def test_record_has_everything(complete_run, repo_root):
    rec = json.loads((complete_run / "record.json").read_text())
    assert rec["run_id"] == complete_run.name and rec["status"] == "complete"
    assert (rec["method"], rec["dataset"], rec["arch"], rec["preset"], rec["seed"]) == (
        "ce",
        "shapes10",
        "resnet8",
        "smoke",
        0,
    )
    assert rec["config"]["train"]["max_steps"] == 4 and rec["config_digest"]
    env = rec["environment"]
    rev = env["git"]["revision"]
    assert re.fullmatch(r"[0-9a-f]{40}", rev)
    assert (
        subprocess.run(
            ["git", "-C", str(repo_root), "cat-file", "-e", f"{rev}^{{commit}}"]
        ).returncode
        == 0
    )
    assert isinstance(env["git"]["dirty"], bool)
    assert env["packages"]["torch"] == importlib.metadata.version("torch")
    assert env["packages"]["trilemma-bench"] and env["packages"]["python"]
    assert env["device"]["type"] == "cpu"
    t = rec["timings"]
    assert t["train_seconds"] > 0 and t["eval_seconds"] > 0 and t["images_per_second"] > 0
    assert rec["created_at"] <= rec["finished_at"]
    tr = rec["training"]
    assert tr["steps_done"] == tr["total_steps"] == 4 and tr["history"]
    assert tr["history"][-1]["step"] == 4 and {"loss", "ce", "lr"} <= set(tr["history"][-1])
    assert tr["validation"] and tr["validation"][-1]["n_examples"] == 32
    assert rec["data"]["train"] == 128 and rec["data"]["test"] == 2000
    ev = rec["evaluations"]["quick"]
    for metric in ("clean", "pgd"):
        assert ev[metric]["protocol"] == "quick" and ev[metric]["n_examples"] == 32
        assert 0 <= ev[metric]["accuracy"] <= 1
    assert (
        ev["pgd"]["settings"]["eps"] == pytest.approx(8 / 255)
        and ev["pgd"]["settings"]["steps"] == 20
    )
    assert ev["pgd"]["accuracy"] <= ev["pgd"]["clean_accuracy"]
    assert rec["artifacts"]["checkpoint"] == "checkpoints/last.pt"
    assert (complete_run / rec["artifacts"]["checkpoint"]).is_file()
