"""sada-jem: EB-JDAT's SADA-JEM base without the adversarial terms. Its settings against the base's,
its step against jem++'s with the SADA-JEM sampler and ASAM, no attack run, and a tiny CLI run that
`bench compare --reference` lays beside SADA-JEM's reported row."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import trainer_for

from bench.run.resolve import resolve_config
from methods import get_method
from methods.base import StepContext

SMALL = [
    "data.batch_size=16",
    "method.px_batch_size=8",
    "method.sampler.steps=2",
    "method.sampler.buffer_size=64",
    "method.sampler.cache_dir=off",
    "train.amp=off",
]


def test_settings_are_the_sada_jem_base_without_the_attack():
    sada, base = (
        resolve_config("sada-jem", preset="paper"),
        resolve_config("ebjdat-sada-jem", preset="paper"),
    )
    for section in ("optim", "data", "model"):
        assert getattr(sada, section) == getattr(base, section), section
    assert sada.train.epochs == base.train.epochs == 200 and sada.train.divergence_bound == 1e5
    o = sada.optim
    assert (o.name, o.lr, o.weight_decay, o.sam_rho, o.sam_adaptive, o.milestones, o.gamma) == (
        "sgd",
        0.01,
        5e-4,
        2.0,
        "on",
        [50, 100, 150],
        0.2,
    )
    m, b = sada.method_cfg, base.method_cfg
    assert (
        m["sampler"] == b["sampler"]
        and m["sampler"]["kind"] == "sgld"
        and m["sampler"]["grad_clamp"] == 1.0
    )
    for key in (
        "px_weight",
        "ce_weight",
        "energy_l2",
        "px_batch_size",
        "px_augment",
        "px_noise_std",
        "grid_size",
    ):
        assert m[key] == b[key], key
    assert not {"eps", "alpha", "adv_weight", "align_weight", "attack_steps"} & set(
        m
    )  # no attack to configure
    lab, px = get_method("sada-jem").from_dict(m).batch_specs()
    assert (lab.batch_size, lab.augment, lab.noise_std) == (None, None, None)
    assert (px.batch_size, px.augment, px.noise_std) == (64, False, 0.015)


def _trainer(method, overrides, tmp, data_dir):
    cfg = resolve_config(
        method, preset="smoke", device="cpu", overrides=[f"data.data_dir={data_dir}", *overrides]
    )
    return _trainer_from(cfg, tmp)


def _trainer_from(cfg, tmp):
    return trainer_for(cfg, tmp)


def _as_jempp(cfg):
    """sada-jem's resolved config run as jem++: same run settings, jem++'s method with the same sampler."""
    keep = ("sampler", "px_weight", "ce_weight", "energy_l2", "separate_px_batch", "grid_size")
    return dataclasses.replace(cfg, method="jem++", method_cfg={k: cfg.method_cfg[k] for k in keep})


def test_step_terms_equal_jempp_with_the_sada_jem_sampler(shapes_data_dir):
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer("sada-jem", SMALL, tmp, shapes_data_dir)
        tj = _trainer_from(_as_jempp(tr.cfg), tmp)
    model = tr.model
    ref = copy.deepcopy(model)
    assert torch.equal(
        tr.method.sampler.buffer.x, tj.method.sampler.buffer.x
    )  # same informative start
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    x_u = torch.rand(8, 3, 32, 32, generator=g)
    out = []
    for tr_, m in ((tr, model), (tj, ref)):
        ctx = StepContext(
            step=0,
            epoch=0,
            device=torch.device("cpu"),
            num_classes=10,
            autocast=contextlib.nullcontext,
            extra_batches=[(x_u, y[:8])],
        )
        torch.manual_seed(7)
        out.append(tr_.method.training_step(m, x, y, ctx))
    assert set(out[0]) == set(out[1]) and {"px", "ce", "e_data", "e_sample"} <= set(out[0])
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=0, atol=0, msg=k)
    assert tr.method.loss_weights() == tj.method.loss_weights() == {"px": 1.0, "ce": 1.0}


def test_one_asam_step_equals_jempps_and_runs_no_attack(shapes_data_dir, monkeypatch):
    """Through the trainer (ASAM's two passes included) sada-jem updates the weights as jem++ does
    with the same sampler, batches and optimiser; no attack function is called, and the model sees
    as many forwards as jem++'s step."""
    import bench.attacks.ebjdat
    import bench.attacks.pgd
    import bench.attacks.trades
    from methods import METHODS

    METHODS.names()  # every built-in method module imported: their bindings of the attacks get spies too
    real = {
        bench.attacks.pgd.pgd_linf,
        bench.attacks.trades.trades_attack,
        bench.attacks.ebjdat.ebjdat_attack,
    }
    attacks = []
    for name, mod in list(
        sys.modules.items()
    ):  # every binding of an attack, wherever it was imported
        if name.split(".")[0] in ("bench", "methods", "metrics") and mod is not None:
            for attr, value in list(vars(mod).items()):
                if any(value is f for f in real):

                    def spy(*a, _f=value, **k):
                        attacks.append(_f.__name__)
                        return _f(*a, **k)

                    monkeypatch.setattr(mod, attr, spy)

    same_batches = ["method.px_augment=same", "method.px_noise_std=-1", "method.px_batch_size=0"]
    with tempfile.TemporaryDirectory() as tmp:
        tr = _trainer("sada-jem", SMALL + same_batches, tmp, shapes_data_dir)
        tj = _trainer_from(_as_jempp(tr.cfg), tmp)
        assert tr.cfg.optim.sam_rho == 2.0 and tj.cfg.optim == tr.cfg.optim
        forwards = []
        for t in (tr, tj):
            n = [0]
            t.model.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
            t.model.train()
            t.set_lr(5)
            a = t.train_step(5)
            forwards.append(n[0])
            if t is tr:
                terms = a
    assert attacks == []
    # x_u, 2 sampler steps, x_hat, x; then the second pass on x_u, x_hat, x (x_hat reused, not redrawn)
    assert forwards[0] == forwards[1] == (1 + 2 + 1 + 1) + 3
    assert torch.isfinite(terms["loss"])
    for p, q in zip(tr.model.parameters(), tj.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(tr.model.buffers(), tj.model.buffers()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_bench_list_shows_the_new_methods_and_architecture(bench_cli):
    methods = {
        line.split()[0]: line
        for line in bench_cli("list", "methods").stdout.splitlines()
        if line.strip()
    }
    assert "SADA-JEM" in methods["sada-jem"] and "MART" in methods["mart"]
    assert "preact-resnet18" in bench_cli("list", "archs").stdout.split()


@pytest.mark.slow
def test_bench_run_sada_jem_smoke_and_its_reported_row(
    bench_cli, results_root, tiny_args, shapes_data_dir
):
    res = bench_cli(
        "run",
        "--method",
        "sada-jem",
        *tiny_args(results_root, shapes_data_dir),
        "--set",
        "method.px_batch_size=16",
        "--set",
        "method.sampler.buffer_size=64",
    )
    assert res.exit_code == 0, res.stderr
    run_dir = Path(re.search(r"^record: (.+)record\.json$", res.stdout, re.M).group(1))
    rec = json.loads((run_dir / "record.json").read_text())
    assert (
        rec["status"] == "complete"
        and rec["method"] == "sada-jem"
        and rec["training"]["steps_done"] == 4
    )
    last = rec["training"]["history"][-1]
    assert {"px", "ce", "e_data", "e_sample", "acc"} <= set(last) and not {
        "adv",
        "align",
        "acc_adv",
    } & set(last)
    assert (
        rec["config"]["optim"]["sam_rho"] == 2.0
        and rec["config"]["method_cfg"]["sampler"]["steps"] == 2
    )
    assert rec["evaluations"]["quick"]["clean"]["n_examples"] == 32
    res = bench_cli(
        "compare",
        "--out",
        str(results_root),
        "--reference",
        "--filter",
        "method=sada-jem",
        "--format",
        "csv",
    )
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(r["kind"] for r in rows) == ["measured", "reported"]
    assert {r["run_id"] for r in rows} == {run_dir.name, "SADA-JEM (EB-JDAT paper)"}
