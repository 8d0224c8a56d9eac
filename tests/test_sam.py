"""SAM / ASAM in the shared trainer and the SADA-JEM base of EB-JDAT."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import smoke_trainer, step_batch

from bench.run.resolve import resolve_config
from bench.train import sam
from methods import get_method


def _params_with_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [
        torch.randn(5, 3, generator=g, requires_grad=True),
        torch.randn(7, generator=g, requires_grad=True),
        torch.randn(2, generator=g, requires_grad=True),
    ]
    for p in ps[:2]:
        p.grad = torch.randn(p.shape, generator=g)
    return ps  # the last one has no gradient


@pytest.mark.parametrize("adaptive", [False, True])
def test_perturbation_has_radius_rho_and_restores_exactly(adaptive):
    ps = _params_with_grads()
    before = [p.detach().clone() for p in ps]
    originals = sam.perturb(ps, rho=0.3, adaptive=adaptive)
    e = [p.detach() - b for p, b in zip(ps, before)]
    assert originals[2] is None and torch.equal(e[2], torch.zeros(2))
    if adaptive:  # ASAM: e = rho |w|^2 g / || |w| g ||, so || e / |w| || = rho
        size = torch.cat([(ei / bi.abs()).flatten() for ei, bi in zip(e[:2], before[:2])]).norm()
        direction = torch.cat([(b.pow(2) * p.grad).flatten() for b, p in zip(before[:2], ps[:2])])
    else:  # SAM: e = rho g / ||g||
        size = torch.cat([ei.flatten() for ei in e[:2]]).norm()
        direction = torch.cat([p.grad.flatten() for p in ps[:2]])
    assert float(size) == pytest.approx(0.3, rel=1e-5)
    got = torch.cat([ei.flatten() for ei in e[:2]])
    assert float(F.cosine_similarity(got, direction, dim=0)) == pytest.approx(1.0, abs=1e-6)
    sam.restore(ps, originals)
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))


def test_frozen_batchnorm_keeps_running_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.9)
    bn(torch.randn(8, 3, 4, 4) + 2)
    mean, var, n = bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)
    x = torch.randn(8, 3, 4, 4) * 3
    with sam.frozen_batchnorm_stats(bn):
        out = bn(x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert int(bn.num_batches_tracked) == n and bn.momentum == 0.9
    torch.testing.assert_close(
        out, F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    )
    # a non-finite batch inside the block (0 * NaN = NaN) does not reach the running statistics
    with sam.frozen_batchnorm_stats(bn):
        bn(torch.full((8, 3, 4, 4), float("nan")))
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)


def test_adaptive_auto_follows_sada_jems_rule():
    assert sam.is_adaptive("auto", 2.0) and sam.is_adaptive("auto", 0.5)
    assert not sam.is_adaptive("auto", 0.05)
    assert sam.is_adaptive("on", 0.05) and not sam.is_adaptive("off", 2.0)


def test_trainer_sam_step_equals_a_hand_written_asam_step():
    """ce + ASAM through the trainer against the algorithm written out here: gradient at w,
    e = rho |w|^2 g / || |w| g ||, gradient at w + e with frozen batch-norm statistics, SGD
    (momentum, weight decay) from w with that gradient."""
    rho, lr, wd = 0.5, 0.05, 5e-4
    sets = [
        f"optim.sam_rho={rho}",
        "optim.sam_adaptive=on",
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
        x, y = step_batch(tr, 3)  # the batch the trainer will see at this step
        tr.train_step(3)

    ref.train()
    params = [p for p in ref.parameters()]
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, params)
    bn_after_first = [b.clone() for b in ref.buffers()]
    norm = torch.cat([(p.abs() * g).flatten() for p, g in zip(params, grads)]).norm()
    w0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(rho * p.pow(2) * g / (norm + 1e-12))
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0
    grads_e = torch.autograd.grad(F.cross_entropy(ref(x), y), params)
    with torch.no_grad():
        expected = [
            w - lr * (g + wd * w) for w, g in zip(w0, grads_e)
        ]  # first SGD step: buffer = gradient
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-6)
    for got, want in zip(model.buffers(), bn_after_first):
        torch.testing.assert_close(got, want)  # running stats: the first pass's only


@pytest.mark.parametrize("method", ["pgd-at", "trades", "jem++", "ebjdat-sada-jem"])
def test_sam_reuses_the_step_samples_and_adversarial_images(method, monkeypatch):
    """The second pass recomputes the loss on the first pass's x_hat / x_adv (the reference's
    order), so the sampler and the attack run once per step."""
    calls = {"draw": 0, "attack": 0}
    import bench.sampling.sampler as sampler_mod
    import methods.ebjdat as ebjdat_mod
    import methods.pgd_at as pgd_mod
    import methods.trades as trades_mod

    real_draw = sampler_mod.ContrastiveSampler.draw

    def counting_draw(self, *a, **k):
        calls["draw"] += 1
        return real_draw(self, *a, **k)

    monkeypatch.setattr(sampler_mod.ContrastiveSampler, "draw", counting_draw)
    for mod, name in (
        (pgd_mod, "pgd_linf"),
        (trades_mod, "trades_attack"),
        (ebjdat_mod, "ebjdat_attack"),
    ):
        real = getattr(mod, name)

        def counting(*a, _real=real, **k):
            calls["attack"] += 1
            return _real(*a, **k)

        monkeypatch.setattr(mod, name, counting)
    with tempfile.TemporaryDirectory() as tmp:
        tr = smoke_trainer(method, ["optim.sam_rho=0.05", "train.log_every=100"], tmp)
        tr.model.train()
        terms = tr.train_step(0)
    assert torch.isfinite(terms["loss"])
    expect_draws = 1 if method in ("jem++", "ebjdat-sada-jem") else 0
    expect_attacks = 0 if method == "jem++" else 1
    assert calls == {"draw": expect_draws, "attack": expect_attacks}


def test_sada_jem_base_settings_and_batches(shapes_data_dir):
    cfg = resolve_config(
        "ebjdat-sada-jem", preset="paper", overrides=[f"data.data_dir={shapes_data_dir}"]
    )
    assert (
        cfg.optim.sam_rho == 2.0
        and cfg.optim.sam_adaptive == "on"
        and cfg.optim.weight_decay == 5e-4
    )
    assert (
        cfg.optim.milestones == [50, 100, 150]
        and cfg.train.epochs == 200
        and cfg.data.batch_size == 128
    )
    assert cfg.data.noise_std == 0.0 and cfg.model.arch == "wrn-28-10"
    mc = cfg.method_cfg
    assert (mc["px_weight"], mc["ce_weight"], mc["align_weight"], mc["adv_weight"]) == (
        1.0,
        1.0,
        0.1,
        1.0,
    )
    s = mc["sampler"]
    assert (
        s["kind"],
        s["steps"],
        s["step_size"],
        s["grad_clamp"],
        s["noise_std"],
        s["clamp"],
        s["mode"],
    ) == ("sgld", 10, 1.0, 1.0, 0.0, True, "train")
    specs = get_method("ebjdat-sada-jem").from_dict(mc).batch_specs()
    assert specs[0].batch_size is None and specs[0].augment is None and specs[0].noise_std is None
    assert (specs[1].batch_size, specs[1].augment, specs[1].noise_std) == (64, False, 0.015)
    # the other bases keep one batch setting for both
    jpp = (
        get_method("ebjdat")
        .from_dict(resolve_config("ebjdat", preset="paper").method_cfg)
        .batch_specs()
    )
    assert all(sp.batch_size is None and sp.augment is None and sp.noise_std is None for sp in jpp)


def test_an_unaugmented_noise_free_batch_is_the_images_themselves():
    from bench.data import to_float
    from methods.base import BatchSpec

    with tempfile.TemporaryDirectory() as tmp:
        tr = smoke_trainer("ebjdat-sada-jem", ["data.noise_std=0.02"], tmp)
        x_u8 = tr.data.x_train[:8]
        torch.testing.assert_close(
            tr.batches.prepare(x_u8, BatchSpec(augment=False, noise_std=0.0)), to_float(x_u8)
        )
        # data.* adds crop/flip/noise
        assert not torch.allclose(tr.batches.prepare(x_u8), to_float(x_u8))
        streams = tr.batches.streams
        assert streams[1].batch_size == 16 and streams[0].batch_size == 16


def test_the_px_batch_follows_its_own_spec_and_cycles_its_own_epochs(monkeypatch):
    """ebjdat-sada-jem's x_u: px_batch_size images, not augmented, noised by px_noise_std only;
    with another size than the labelled batch it runs through its own epochs."""
    from bench.data import to_float

    seen = []
    import methods.ebjdat as ebjdat_mod

    real_step = ebjdat_mod.EBJDAT.training_step

    def spy(self, model, x, y, ctx):
        seen.append((x.shape[0], ctx.extra_batches[0][0].detach().clone()))
        return real_step(self, model, x, y, ctx)

    monkeypatch.setattr(ebjdat_mod.EBJDAT, "training_step", spy)
    sets = [
        "data.train_subset=96",
        "data.batch_size=32",
        "method.px_batch_size=20",
        "method.px_noise_std=0.0",
        "data.noise_std=0.05",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tr = smoke_trainer("ebjdat-sada-jem", sets, tmp)
        streams = tr.batches.streams
        assert (len(streams[0]), len(streams[1])) == (3, 4)  # 96 // 32, 96 // 20
        tr.model.train()
        for step in range(6):  # crosses the p(x) stream's epoch boundary at step 4
            tr.train_step(step)
        assert len(seen) == 12  # SAM: two passes per step, on the same batches
        assert all(torch.equal(a[1], b[1]) for a, b in zip(seen[0::2], seen[1::2]))
        seen = seen[0::2]
        for step, (n_lab, x_u) in enumerate(seen):
            assert n_lab == 32 and x_u.shape[0] == 20
            epoch, index = divmod(step, 4)
            expected = to_float(streams[1].batch(epoch, index)[0])
            torch.testing.assert_close(x_u, expected)
        # step 4 starts the p(x) stream's second epoch: a new permutation, not step 0's batch again
        assert not torch.equal(seen[4][1], seen[0][1])


def test_sada_jem_smoke_run(bench_cli, tmp_path, shapes_data_dir):
    res = bench_cli(
        "run",
        "--method",
        "ebjdat-sada-jem",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path),
        "-q",
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "train.max_steps=3",
        "--set",
        "eval.enabled=false",
    )
    assert res.exit_code == 0, res.stderr
    import json

    (run,) = (tmp_path / "runs").iterdir()
    rec = json.loads((run / "record.json").read_text())
    assert rec["status"] == "complete" and rec["config"]["optim"]["sam_rho"] == 2.0
    last = rec["training"]["history"][-1]
    assert all(k in last for k in ("px", "ce", "align", "adv"))


def test_a_px_batch_larger_than_the_data_names_its_setting(bench_cli, tmp_path, shapes_data_dir):
    res = bench_cli(
        "run",
        "--method",
        "ebjdat-sada-jem",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path),
        "-q",
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "method.px_batch_size=100000",
    )
    assert res.exit_code == 2 and "method.px_batch_size=100000" in res.stderr
    assert (
        len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    )  # nothing written
