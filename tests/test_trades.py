"""TRADES: the loss against its formula, the KL inner maximisation, the config."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from bench.attacks.trades import trades_attack
from bench.core.config import ModelConfig
from bench.core.errors import BenchError
from bench.models import build_model
from bench.run.resolve import resolve_config
from methods import get_method
from methods.base import StepContext

EPS, ALPHA = 8 / 255, 2 / 255


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="resnet8", mean=(0.0,) * 3, std=(1.0,) * 3), num_classes=10)


def batch(n=6, seed=1, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def ctx():
    return StepContext(
        step=0, epoch=0, device=torch.device("cpu"), num_classes=10, autocast=contextlib.nullcontext
    )


def warm_bn(model, x):
    """Give batch norm non-trivial running statistics, so eval mode differs from train mode."""
    model.train()
    with torch.no_grad():
        for k in range(3):
            model(x.roll(k, 0) * 0.9 + 0.05)


def reference_attack(model, x, eps, alpha, steps, noise):
    """TRADES's inner loop written out: eval mode, fixed clean probabilities, Gaussian start."""
    model.eval()
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
    xa = x + 0.001 * noise
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        kl = (p * (torch.log(p) - F.log_softmax(model(xa), dim=1))).sum()
        (g,) = torch.autograd.grad(kl, xa)
        xa = xa.detach() + alpha * g.sign()
        xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    return xa.detach()


def test_attack_matches_the_reference_loop_and_stays_in_the_ball():
    model = tiny_model()
    x, _ = batch()
    warm_bn(model, x)
    torch.manual_seed(5)
    noise = torch.randn_like(x)
    expected = reference_attack(copy.deepcopy(model), x, EPS, ALPHA, 10, noise)
    torch.manual_seed(5)
    got = trades_attack(model, x, eps=EPS, alpha=ALPHA, steps=10)
    assert model.training  # restored after the eval-mode attack
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got - x).abs().max() <= EPS + 1e-6
    assert got.min() >= 0 and got.max() <= 1
    assert (got - x).abs().max() > EPS - 1e-4  # it did move out to the ball's boundary


def test_pgd_linf_default_start_is_unchanged():
    """pgd_linf's new ``start=`` argument leaves the default uniform start as it was."""
    from bench.attacks.pgd import pgd_linf

    model = tiny_model()
    x, y = batch()
    model.eval()
    torch.manual_seed(2)
    a = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=2)
    torch.manual_seed(2)
    start = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    b = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=2, start=lambda c: start)
    assert torch.equal(a, b)


def test_attack_increases_the_kl_term():
    model = tiny_model()
    x, _ = batch()
    warm_bn(model, x)
    model.eval()

    def kl(xa):
        with torch.no_grad():
            p = F.softmax(model(x), 1)
            return float((p * (p.log() - F.log_softmax(model(xa), 1))).sum())

    torch.manual_seed(3)
    start = x + 0.001 * torch.randn_like(x)
    rand = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    torch.manual_seed(3)
    x_adv = trades_attack(model, x, eps=EPS, alpha=ALPHA, steps=10)
    k_start, k_rand, k_adv = kl(start), kl(rand), kl(x_adv)
    assert k_adv > 10 * k_start
    assert k_adv > 2 * k_rand
    # more steps do not lower it
    torch.manual_seed(3)
    assert kl(trades_attack(model, x, eps=EPS, alpha=ALPHA, steps=2)) < k_adv


@pytest.mark.parametrize("single", [False, True])
def test_loss_equals_the_formula(single):
    method = get_method("trades").from_dict({"single_clean_forward": single})
    model = tiny_model()
    x, y = batch()
    warm_bn(model, x)
    ref = copy.deepcopy(model)

    torch.manual_seed(11)
    terms = method.training_step(model, x, y, ctx())

    torch.manual_seed(11)
    noise = torch.randn_like(x)
    xa = reference_attack(ref, x, EPS, ALPHA, 10, noise)
    ref.train()
    logits = ref(x)
    q_log = F.log_softmax(ref(xa), 1)
    p = F.softmax(logits if single else ref(x), 1)
    ce = F.cross_entropy(logits, y)
    kl = (p * (p.log() - q_log)).sum() / x.shape[0]

    assert torch.allclose(terms["ce"], ce, atol=1e-6)
    assert torch.allclose(terms["kl"], kl, atol=1e-6)
    assert kl > 0
    assert method.loss_weights() == {"ce": 1.0, "kl": 6.0}
    total = sum(w * terms[k] for k, w in method.loss_weights().items())
    assert torch.allclose(total, ce + 6.0 * kl, atol=1e-5)
    # the KL target is not detached (as the reference): the KL term's gradient is the formula's,
    # through the adversarial logits and the clean target alike
    got = torch.autograd.grad(terms["kl"], list(model.parameters()), retain_graph=True)
    want = torch.autograd.grad(kl, list(ref.parameters()), retain_graph=True)
    for (name, _), g, w in zip(model.named_parameters(), got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-7), name
    # batch-norm running statistics after the step: the reference's forwards, clean/adv/clean
    for (name, b1), b2 in zip(model.named_buffers(), ref.buffers()):
        assert torch.allclose(b1.float(), b2.float(), atol=1e-6), name


def test_reference_defaults_and_validation():
    cfg = resolve_config("trades", preset="paper")
    assert cfg.method_cfg["beta"] == 6.0 and cfg.method_cfg["steps"] == 10
    assert cfg.method_cfg["eps"] == pytest.approx(8 / 255) and cfg.method_cfg[
        "alpha"
    ] == pytest.approx(2 / 255)
    assert cfg.method_cfg["attack_mode"] == "eval" and cfg.method_cfg["start_std"] == 0.001
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule, o.gamma) == (
        "sgd",
        0.1,
        0.9,
        2e-4,
        "step",
        0.1,
    )
    assert o.milestones == [74, 89, 99] and cfg.train.epochs == 76 and cfg.data.batch_size == 128
    assert cfg.data.pad_mode == "zeros" and cfg.data.noise_std == 0
    smoke = resolve_config("trades", preset="smoke")
    assert smoke.method_cfg["steps"] < 10
    with pytest.raises(BenchError):
        resolve_config("trades", preset="smoke", overrides=["method.attack_mode=sideways"])
