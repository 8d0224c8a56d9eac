"""EB-JDAT: the attack and the four loss terms against a straightforward computation written from
the specification (methods.md, "EB-JDAT, as the authors' code implements it"), on the [-1, 1]
scale the reference works on; the order and modes of the forwards; the bases; the data error."""

from __future__ import annotations

import contextlib
import copy
import sys

import pytest
import torch
import torch.nn.functional as F

from bench.attacks.ebjdat import ebjdat_attack
from bench.core.config import ModelConfig
from bench.core.errors import BenchError
from bench.data import ImageData
from bench.models import build_model
from bench.run.resolve import resolve_config
from methods import get_method
from methods.base import StepContext

EPS, ALPHA = 8 / 255, 2 / 255  # the reference's numbers, on the [-1, 1] scale
SIZE = 16


def tiny_model(norm="batch", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="resnet8", norm=norm, bn_momentum=0.9, activation="leaky_relu")
    return build_model(cfg, num_classes=10)


def tiny_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    return ImageData(
        "tiny", x, y, x[:10].clone(), y[:10].clone(), classes=[str(k) for k in range(10)]
    )


def batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)


def warm_bn(model, x):
    """Non-trivial running statistics, so that eval mode differs from train mode."""
    model.train()
    with torch.no_grad():
        for k in range(3):
            model(x.roll(k, 0) * 0.8 + 0.1)


def E(logits):
    return -torch.logsumexp(logits, dim=1)


# -- the specification, written out on the reference's [-1, 1] scale ---------------------------
def spec_attack(model, x01, y, *, eps, alpha, steps, delta, project=False, sign=1.0):
    """sampleXadv: eval mode; start clamp(x + delta, -1, 1); `steps` signed ascent steps on
    sign * sum_i f(x')_i[y_i] + sum_i ||z_i/(||z_i||+1e-10) - z'_i/(||z'_i||+1e-10)||^2; clamp to
    [-1, 1] (and to the eps-ball if `project`); the model restored to train mode."""

    def f(xs):
        return model((xs + 1) / 2)  # the model takes [0, 1] pixels; xs is on [-1, 1]

    model.eval()
    xs = x01 * 2 - 1
    xa = (xs + delta).clamp(-1, 1)
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        z, za = f(xs), f(xa)
        g = sign * za[torch.arange(len(y)), y].sum()
        for i in range(len(y)):  # the reference iterates the rows
            g = g + ((z[i] / (z[i].norm() + 1e-10) - za[i] / (za[i].norm() + 1e-10)) ** 2).sum()
        (grad,) = torch.autograd.grad(g, xa)
        xa = xa.detach() + alpha * grad.sign()
        if project:
            xa = torch.min(torch.max(xa, xs - eps), xs + eps)
        xa = xa.clamp(-1, 1)
    model.train()
    return ((xa + 1) / 2).detach()


def test_attack_matches_the_specification():
    model = tiny_model()
    x, y = batch()
    warm_bn(model, x)
    ref = copy.deepcopy(model)
    torch.manual_seed(7)
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    expected = spec_attack(ref, x, y, eps=EPS, alpha=ALPHA, steps=5, delta=delta)
    torch.manual_seed(7)
    got = ebjdat_attack(model, x, y)  # defaults: 8/255 and 2/255 on [-1, 1], 5 steps, no projection
    assert model.training  # restored after the eval-mode attack
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert got.min() >= 0 and got.max() <= 1  # the range clamp
    dist = (got - x).abs().amax()
    # no projection: beyond eps (4/255 in pixels), up to eps + 5 alpha = 18/255 on [-1, 1] = 9/255 in pixels
    assert 4 / 255 + 1e-4 < dist <= 9 / 255 + 1e-6
    # the random start alone stays within eps
    torch.manual_seed(7)
    start = ebjdat_attack(model, x, y, steps=0)
    assert (start - x).abs().amax() <= 4 / 255 + 1e-6 and (start - x).abs().amax() > 3 / 255


@pytest.mark.parametrize("units", ["sym", "pixel"])
def test_attack_switches_projection_units_steps_sign(units):
    model = tiny_model()
    x, y = batch(seed=4)
    warm_bn(model, x)
    ref = copy.deepcopy(model)
    scale = 1.0 if units == "sym" else 2.0  # to the [-1, 1] scale
    torch.manual_seed(3)
    delta = torch.empty_like(x).uniform_(-EPS * scale, EPS * scale)
    expected = spec_attack(
        ref,
        x,
        y,
        eps=EPS * scale,
        alpha=ALPHA * scale,
        steps=3,
        delta=delta,
        project=True,
        sign=-1.0,
    )
    torch.manual_seed(3)
    got = ebjdat_attack(
        model, x, y, eps=EPS, alpha=ALPHA, steps=3, eps_units=units, project=True, energy_sign=-1.0
    )
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    eps_px = EPS * scale / 2
    assert (got - x).abs().amax() <= eps_px + 1e-6  # projected onto the ball
    assert (got - x).abs().amax() > eps_px - 1e-4


def test_whole_batch_attack_equals_the_references_two_image_chunks():
    model = tiny_model()
    x, y = batch(n=7, seed=5)  # an odd batch: the last chunk holds one image
    warm_bn(model, x)
    ref = copy.deepcopy(model)
    torch.manual_seed(9)
    delta = torch.empty_like(x).uniform_(-EPS, EPS)
    chunks = [
        spec_attack(
            ref, x[i : i + 2], y[i : i + 2], eps=EPS, alpha=ALPHA, steps=5, delta=delta[i : i + 2]
        )
        for i in range(0, len(y), 2)
    ]
    torch.manual_seed(9)
    got = ebjdat_attack(model, x, y)
    assert torch.allclose(got, torch.cat(chunks), atol=1e-6, rtol=0)


# -- the loss terms --------------------------------------------------------------------------
def make_method(name="ebjdat", **values):
    values.setdefault("sampler", {}).setdefault("cache_dir", "off")
    method = get_method(name).from_dict(values)
    method.setup(None, tiny_data(), torch.device("cpu"))
    return method


def watch_draw(method):
    """Keep what the sampler returned and the RNG state right after it (the attack draws next)."""
    seen = {}
    draw = method.sampler.draw

    def observed(*args, **kw):
        seen["x_hat"] = draw(*args, **kw)
        seen["rng"] = torch.get_rng_state()
        return seen["x_hat"]

    method.sampler.draw = observed
    return seen


def ctx_for(x_u, y_u):
    return StepContext(
        step=0,
        epoch=0,
        device=torch.device("cpu"),
        num_classes=10,
        autocast=contextlib.nullcontext,
        extra_batches=[(x_u, y_u)],
    )


CASES = {
    "faithful": {},
    "projected-pixel-3steps": {"project": True, "eps_units": "pixel", "attack_steps": 3},
    "jem-sign-source-pair": {"adv_energy_sign": -1.0, "align_pair": "source", "attack_steps": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_terms_match_the_specification(case):
    opts = CASES[case]
    # sampler steps 0: x_hat is the buffer draw itself, so every forward of the step is reproduced below
    method = make_method(sampler={"steps": 0, "buffer_size": 32}, **opts)
    model = tiny_model()
    x, y = batch(seed=2)
    x_u, y_u = batch(seed=3)
    warm_bn(model, x_u)
    ref = copy.deepcopy(model)
    seen = watch_draw(method)
    torch.manual_seed(21)
    terms = method.training_step(model, x, y, ctx_for(x_u, y_u))

    # straightforward computation, same order, train mode for every loss-term forward
    ref.train()
    e_u = E(ref(x_u))
    e_hat = E(ref(seen["x_hat"]))
    px = -((-e_u).mean() - (-e_hat).mean())
    logits = ref(x)
    ce = F.cross_entropy(logits, y)
    steps = opts.get("attack_steps", 5)  # tied to in_steps = 5 unless decoupled
    scale = 2.0 if opts.get("eps_units") == "pixel" else 1.0
    torch.set_rng_state(seen["rng"])
    delta = torch.empty_like(x).uniform_(-EPS * scale, EPS * scale)
    sign = opts.get("adv_energy_sign", 1.0)
    x_adv = spec_attack(
        ref,
        x,
        y,
        eps=EPS * scale,
        alpha=ALPHA * scale,
        steps=steps,
        delta=delta,
        project=opts.get("project", False),
        sign=sign,
    )
    e_pos = E(ref(x if opts.get("align_pair") == "source" else x_u))
    e_adv = E(ref(x_adv))
    align = sign * (e_pos.mean() - e_adv.mean())  # code: -(mean(-E(x_u)) - mean(-E(x_adv)))
    adv = F.cross_entropy(ref(x_adv), y)

    for name, value in (("px", px), ("ce", ce), ("align", align), ("adv", adv)):
        assert torch.allclose(terms[name], value, atol=2e-5, rtol=1e-5), (
            name,
            float(terms[name]),
            float(value),
        )
    assert torch.allclose(terms["e_data"], e_u.mean(), atol=2e-5)
    assert torch.allclose(terms["e_sample"], e_hat.mean(), atol=2e-5)
    assert torch.allclose(terms["e_adv"], e_adv.mean(), atol=2e-5)
    assert torch.allclose(
        terms["energy_sq"], e_u.pow(2).mean() + e_hat.pow(2).mean(), rtol=1e-5
    )  # logged, weight 0
    assert float(terms["adv_linf"]) == pytest.approx(float((x_adv - x).abs().amax()), abs=1e-6)
    # the weights of the JEM++ base and the sum the trainer minimises
    w = method.loss_weights()
    assert w == {"px": 1.0, "ce": 1.0, "align": 0.1, "adv": 1.0}
    assert make_method(sampler={"steps": 0}, energy_l2=0.1).loss_weights()["energy_sq"] == 0.1
    total = sum(wk * terms[k] for k, wk in w.items())
    assert torch.allclose(total, px + ce + 0.1 * align + adv, atol=5e-5)
    # the gradient reaches the weights through every term
    for name in ("px", "ce", "align", "adv"):
        (g,) = torch.autograd.grad(terms[name], model.head.weight, retain_graph=True)
        assert g.abs().sum() > 0, name
    # same forwards in the same order and modes => the same batch-norm running statistics
    for (name, b1), b2 in zip(model.named_buffers(), ref.buffers()):
        assert torch.allclose(b1.float(), b2.float(), atol=1e-5), name
    assert model.training


def test_order_and_modes_of_the_forwards():
    method = make_method(sampler={"steps": 2, "buffer_size": 32}, attack_steps=2)
    model = tiny_model()
    x, y = batch(seed=2)
    x_u, y_u = batch(seed=3)
    seen = watch_draw(method)
    log = []
    model.register_forward_pre_hook(
        lambda m, args: log.append((m.training, args[0].detach().clone()))
    )
    torch.manual_seed(0)
    method.training_step(model, x, y, ctx_for(x_u, y_u))

    def same(a, b):
        return a.shape == b.shape and torch.equal(a, b)

    modes = [t for t, _ in log]
    # x_u, 2 sampler forwards (train mode: PYLD in the JEM++ base), x_hat, x, attack (eval: clean z + 2 steps),
    # x_u again, x_adv (align), x_adv again (CE)
    assert modes == [True, True, True, True, True, False, False, False, True, True, True]
    assert same(log[0][1], x_u) and same(log[8][1], x_u)
    assert not same(log[1][1], x_u) and not same(log[2][1], x_u)
    assert same(log[3][1], seen["x_hat"])
    assert same(log[4][1], x) and same(log[5][1], x)
    x_adv = log[9][1]
    assert same(log[10][1], x_adv) and not same(x_adv, x)


def test_jem_base_weights_sampler_and_run_settings():
    cfg = resolve_config("ebjdat-jem", preset="paper")
    m = cfg.method_cfg
    assert m["base"] == "jem"
    assert (m["px_weight"], m["ce_weight"], m["align_weight"], m["adv_weight"]) == (
        0.45,
        0.45,
        0.05,
        0.45,
    )
    s = m["sampler"]
    assert (
        s["kind"],
        s["steps"],
        s["step_size"],
        s["noise_std"],
        s["clamp"],
        s["mode"],
        s["init"],
    ) == ("sgld", 10, 1.0, 0.01, False, "eval", "uniform")
    assert (s["buffer_size"], s["reinit_freq"]) == (10000, 0.05)
    o = cfg.optim
    assert (o.name, o.lr, o.weight_decay, o.warmup_steps, o.milestones, o.gamma) == (
        "adam",
        1e-5,
        0.0,
        1000,
        [160, 180],
        0.3,
    )
    assert cfg.data.batch_size == 128 and cfg.train.epochs == 200 and cfg.model.norm == "none"
    assert cfg.data.noise_std == 0.015  # 0.03 on [-1, 1]
    method = get_method("ebjdat-jem").from_dict(cfg.method_cfg)
    assert method.loss_weights() == {"px": 0.45, "ce": 0.45, "align": 0.05, "adv": 0.45}
    assert (
        method.cfg.steps == 5
    )  # the attack's steps: tied to in_steps (hard-coded 5 in the JEM base)


def test_jempp_base_run_settings_and_base_errors():
    cfg = resolve_config("ebjdat", preset="paper")
    o, m = cfg.optim, cfg.method_cfg
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.warmup_steps, o.milestones, o.gamma) == (
        "sgd",
        0.01,
        0.9,
        4e-4,
        1000,
        [40, 80, 120],
        0.2,
    )
    assert (cfg.data.batch_size, cfg.data.noise_std, cfg.train.epochs, cfg.data.val_size) == (
        64,
        0.015,
        150,
        5000,
    )
    assert (cfg.model.arch, cfg.model.norm, cfg.model.bn_momentum, cfg.model.activation) == (
        "wrn-28-10",
        "batch",
        0.9,
        "leaky_relu",
    )
    s = m["sampler"]
    assert (
        s["kind"],
        s["steps"],
        s["in_steps"],
        s["pyld_lr"],
        s["eps"],
        s["step_size"],
        s["noise_std"],
    ) == ("pyld", 10, 5, 0.2, 1.0, 0.0, 0.0)
    assert (s["mode"], s["init"], s["buffer_size"], s["reinit_freq"]) == (
        "train",
        "informative",
        10000,
        0.05,
    )
    assert (
        m["eps_units"],
        m["project"],
        m["attack_steps"],
        m["adv_energy_sign"],
        m["align_pair"],
    ) == ("sym", False, 0, 1.0, "other")
    assert m["eps"] == pytest.approx(8 / 255) and m["alpha"] == pytest.approx(2 / 255)
    with pytest.raises(BenchError, match="--method ebjdat-jem"):
        resolve_config("ebjdat", overrides=["method.base=jem"])
    with pytest.raises(BenchError, match="--method ebjdat-sada-jem"):
        resolve_config("ebjdat", overrides=["method.base=sada-jem"])
    with pytest.raises(BenchError, match="unknown EB-JDAT base"):
        resolve_config("ebjdat", overrides=["method.base=ebm-9000"])
    with pytest.raises(BenchError):
        resolve_config("ebjdat", overrides=["method.eps_units=furlongs"])
    # decoupled attack steps are recorded
    c2 = resolve_config("ebjdat", preset="smoke", overrides=["method.attack_steps=4"])
    assert get_method("ebjdat").from_dict(c2.method_cfg).cfg.steps == 4


@pytest.mark.parametrize("name", ["ebjdat", "ebjdat-jem"])
def test_trainer_runs_steps_logs_terms_and_checkpoints(tmp_path, name):
    from bench.train.trainer import Trainer

    cfg = resolve_config(
        name,
        preset="smoke",
        overrides=[
            "data.batch_size=8",
            "train.max_steps=2",
            "train.log_every=1",
            "train.checkpoint_every=100",  # none but the last
            "train.eval_every=0",
            "train.channels_last=false",
            "method.sampler.cache_dir='off'",
            "method.sampler.buffer_size=16",
            "method.sampler.steps=1",
            "method.attack_steps=1",
        ],
    )
    data = tiny_data()
    method = get_method(name).from_dict(cfg.method_cfg)
    model = tiny_model(norm=cfg.model.norm)
    method.setup(model, data, torch.device("cpu"))
    trainer = Trainer(cfg, model, method, data, torch.device("cpu"), tmp_path, show_progress=False)
    state = trainer.fit()
    last = state.history[-1]
    for key in (
        "px",
        "ce",
        "align",
        "adv",
        "e_data",
        "e_sample",
        "e_adv",
        "e_clean",
        "e_adv_gap",
        "acc_adv",
    ):
        assert key in last, key
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / method.artifacts()["buffer_grid"]).is_file()  # the replay buffer's PNG grid
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert saved["method"]["sampler"]["buffer"]["x"].shape == (16, 3, SIZE, SIZE)


def test_missing_cifar_gives_one_line_naming_the_place(tmp_path, monkeypatch, capsys):
    """`bench run --method ebjdat --dataset cifar10` without the files: one error line saying where to put them."""
    from bench.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "bench",
            "run",
            "--method",
            "ebjdat",
            "--dataset",
            "cifar10",
            "--preset",
            "paper",
            "--data-dir",
            str(tmp_path / "nodata"),
            "--set",
            "data.download=false",
            "--out",
            str(tmp_path / "results"),
            "-q",
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert "cifar-10-python.tar.gz" in errors[0] and str(tmp_path / "nodata") in errors[0]
    assert not list(
        (tmp_path / "results").glob("runs/*")
    )  # nothing written for a run that never started
