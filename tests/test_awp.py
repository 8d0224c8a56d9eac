"""AWP (adversarial weight perturbation) in the shared trainer and the -awp method variants."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import only_run, smoke_trainer, step_batch

from bench.core.config import BenchError
from bench.run.layers import method_preset
from bench.run.resolve import resolve_config
from bench.train import awp
from methods import METHODS


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


def test_perturbation_is_per_layer_relative_along_the_gradient_and_skips_vectors():
    model = _model()
    params = awp.perturbed_parameters(model)
    assert [tuple(p.shape) for p in params] == [(4, 3, 3, 3), (5, 144)]  # kernels and matrices only
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moves = awp.perturb(params, gamma=5e-3)
    after = dict(model.named_parameters())
    for name in ("0.weight", "4.weight"):
        v = after[name].detach() - before[name]
        # ||v_l|| = gamma ||w_l||, per layer (not one global norm as SAM's)
        assert float(v.norm()) == pytest.approx(5e-3 * float(before[name].norm()), rel=1e-4)
        assert float(
            F.cosine_similarity(v.flatten(), after[name].grad.flatten(), dim=0)
        ) == pytest.approx(1.0, abs=1e-5)
    for name in ("0.bias", "1.weight", "1.bias", "4.bias"):
        assert torch.equal(after[name].detach(), before[name])
    awp.restore(moves)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=1e-7)


def test_a_parameter_without_gradient_is_not_moved_and_warmup_gates_it():
    model = _model()
    params = awp.perturbed_parameters(model)
    w = params[0].detach().clone()
    assert awp.perturb(params, 5e-3) == [] and torch.equal(params[0].detach(), w)
    assert (
        not awp.active(0.0, 0.0, 3.0)
        and not awp.active(5e-3, 2.0, 1.5)
        and awp.active(5e-3, 2.0, 2.0)
    )


def test_trainer_awp_step_equals_the_reference_algorithm_written_out():
    """ce + AWP through the trainer against the authors' loop written out here: gradient at w,
    v_l = gamma ||w_l|| g_l / ||g_l|| on weight tensors, gradient at w + v (running statistics
    as after the first pass), SGD (momentum, weight decay) stepping at w + v, then v subtracted."""
    gamma, lr, wd = 0.01, 0.05, 5e-4
    sets = [
        f"optim.awp_gamma={gamma}",
        f"optim.lr={lr}",
        f"optim.weight_decay={wd}",
        "optim.warmup_steps=0",
        "optim.momentum=0.9",
        "train.amp=off",
        "model.norm=batch",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tr = smoke_trainer("ce", sets, tmp)
        model = tr.model
        ref = copy.deepcopy(model)
        tr.set_lr(0)
        x, y = step_batch(tr, 3)
        tr.train_step(3)

    ref.train()
    params = list(ref.parameters())
    grads = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
    bn_after_first = [b.clone() for b in ref.buffers()]
    v = [
        gamma * p.detach().norm() / (g.norm() + 1e-20) * g if p.ndim >= 2 else torch.zeros_like(p)
        for p, g in zip(params, grads)
    ]
    with torch.no_grad():
        for p, vi in zip(params, v):
            p.add_(vi)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0
    grads_v = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
    with (
        torch.no_grad()
    ):  # first SGD step (momentum buffer = gradient), taken at w + v, then v removed
        expected = [p - lr * (g + wd * p) - vi for p, g, vi in zip(params, grads_v, v)]
    moved = 0
    for got, want, vi in zip(model.parameters(), expected, v):
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-6)
        moved += int(vi.abs().sum() > 0)
    assert moved == len(awp.perturbed_parameters(model)) >= 2
    for got, want in zip(model.buffers(), bn_after_first):
        torch.testing.assert_close(got, want)  # running stats: the first pass's only


def test_awp_changes_the_step_and_reuses_the_adversarial_examples(monkeypatch):
    import methods.pgd_at as pgd_mod

    calls = {"attack": 0}
    real = pgd_mod.pgd_linf

    def counting(*a, **k):
        calls["attack"] += 1
        return real(*a, **k)

    monkeypatch.setattr(pgd_mod, "pgd_linf", counting)
    finals = {}
    for gamma in (0.0, 5e-3):
        with tempfile.TemporaryDirectory() as tmp:
            tr = smoke_trainer("pgd-at", [f"optim.awp_gamma={gamma}", "train.amp=off"], tmp)
            tr.set_lr(0)
            tr.train_step(0)
            finals[gamma] = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    assert calls["attack"] == 2  # one attack per step, with or without AWP
    assert not torch.allclose(finals[0.0], finals[5e-3])


def test_awp_variants_are_their_base_methods_with_the_papers_gamma():
    for name, base in (("pgd-at-awp", "pgd-at"), ("trades-awp", "trades"), ("mart-awp", "mart")):
        assert name in METHODS.names()
        for preset in ("smoke", "demo", "cpu", "paper"):
            cfg, base_cfg = resolve_config(name, preset=preset), resolve_config(base, preset=preset)
            assert cfg.optim.awp_gamma == 5e-3 and base_cfg.optim.awp_gamma == 0.0
            assert (
                cfg.method_cfg == base_cfg.method_cfg and cfg.train.epochs == base_cfg.train.epochs
            )
            assert method_preset(name, preset) == method_preset(base, preset)
    assert resolve_config("trades-awp", preset="paper").model.arch == "wrn-34-10"


@pytest.mark.parametrize(
    "sets, words",
    [
        (["optim.awp_gamma=-1"], "optim.awp_gamma"),
        (["optim.awp_warmup_epochs=-2"], "optim.awp_warmup_epochs"),
        (["optim.sam_rho=0.05"], "set one of them to 0"),
    ],
)
def test_bad_awp_settings_are_refused_in_one_line(sets, words):
    with pytest.raises(BenchError) as err:
        resolve_config("pgd-at-awp", preset="smoke", overrides=sets)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_trades_awp_trains_end_to_end(bench_cli, results_root, shapes_data_dir):
    res = bench_cli(
        "run",
        "--method",
        "trades-awp",
        "--preset",
        "smoke",
        "-q",
        "--out",
        str(results_root),
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "train.max_steps=3",
        "--set",
        "eval.n_examples=16",
        "--set",
        "optim.awp_warmup_epochs=0",
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(results_root)
    assert (
        rec["status"] == "complete"
        and rec["method"] == "trades-awp"
        and rec["config"]["optim"]["awp_gamma"] == 5e-3
    )
    assert "optim.awp_gamma" not in rec["changes"]  # the method's own setting, not a departure
    listed = bench_cli("list", "methods")
    assert "trades-awp" in listed.stdout and "Adversarial Weight Perturbation" in listed.stdout


def test_a_plugin_subclassing_a_built_in_keeps_its_own_preset_variants():
    from methods.base import register_method
    from methods.pgd_at import PGDAT

    @register_method("my-at")
    class MyAT(PGDAT):
        presets = {"demo": {"method": {"steps": 2}}}

    @register_method("my-at-plain")
    class MyATPlain(PGDAT):
        pass

    try:
        assert method_preset("my-at", "demo") == {"method": {"steps": 2}}
        assert method_preset("my-at-plain", "demo") == method_preset("pgd-at", "demo")
    finally:
        METHODS.unregister("my-at")
        METHODS.unregister("my-at-plain")
