"""The shared l-inf PGD attack (bench.attacks.pgd)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.attacks.pgd import pgd_linf, project_linf
from bench.core.config import ModelConfig
from bench.models import build_model

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet8"), 10)
    # shapes10 images with saturated borders, so the range clamp matters
    from bench.data import shapes

    imgs, labels = shapes.generate(30, seed=3)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    x[:, 0, :2] = 0.0
    x[:, 1, -2:] = 1.0
    y = torch.from_numpy(labels)
    # a few training steps so the model has confident predictions to attack
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, x, y


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_attack_raises_the_loss_and_stays_in_the_ball(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    x_adv = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=7)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    clean, adv = _loss(model, x, y), _loss(model, x_adv, y)
    assert adv.mean() > clean.mean() + 0.1
    assert (adv >= clean - 1e-4).float().mean() > 0.9
    # acc drops
    with torch.no_grad():
        assert (model(x_adv).argmax(1) == y).sum() < (model(x).argmax(1) == y).sum()
    delta = x_adv - x
    assert delta.abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # signed steps push most free pixels to the boundary of the ball
    free = (x > EPS) & (x < 1 - EPS)
    assert ((delta.abs() > EPS - 1e-6) & free).sum() > 0.5 * free.sum()


def test_projection_holds_with_large_steps(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(2)
    x_adv = pgd_linf(model, x, y, eps=EPS, alpha=0.5, steps=3)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # saturated pixels may only move inwards
    assert (x_adv[:, 0] >= 0).all() and (x_adv[:, 1, -2:] <= 1).all()
    p = project_linf(torch.full((1, 3, 2, 2), 2.0), torch.full((1, 3, 2, 2), 0.5), 0.1)
    assert torch.allclose(p, torch.full((1, 3, 2, 2), 0.6))


def test_random_start_and_determinism(model_and_batch):
    model, x, y = model_and_batch
    a = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=0, random_start=True)
    assert 0 < (a - x).abs().max() <= EPS + 1e-6
    assert torch.equal(pgd_linf(model, x, y, eps=EPS, steps=0, random_start=False), x)
    b1 = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=3, random_start=False)
    b2 = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=3, random_start=False)
    assert torch.equal(b1, b2)
    torch.manual_seed(5)
    c1 = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=3)
    torch.manual_seed(5)
    c2 = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=3)
    assert torch.equal(c1, c2) and not torch.equal(c1, b1)


def test_no_parameter_gradients_are_accumulated(model_and_batch):
    model, x, y = model_and_batch
    assert all(p.grad is None for p in model.parameters())
    pgd_linf(model, x, y, steps=2)
    assert all(p.grad is None for p in model.parameters())
    # existing gradients (inside a training step) are left exactly as they were
    F.cross_entropy(model(x), y).backward()
    before = [p.grad.clone() for p in model.parameters()]
    pgd_linf(model, x, y, steps=2, restarts=2)
    assert all(torch.equal(b, p.grad) for b, p in zip(before, model.parameters()))
    for p in model.parameters():
        p.grad = None


def test_model_mode_is_restored(model_and_batch):
    model, x, y = model_and_batch
    seen = []
    handle = model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for start, mode in (("train", "eval"), ("eval", "train"), ("train", None), ("eval", None)):
            model.train(start == "train")
            seen.clear()
            pgd_linf(model, x[:4], y[:4], steps=2, mode=mode)
            expect = start == "train" if mode is None else mode == "train"
            assert seen and all(s == expect for s in seen), (start, mode)
            assert model.training == (start == "train"), (start, mode)
    finally:
        handle.remove()
        model.load_state_dict(state)  # train-mode forwards moved the BN statistics
        model.eval()


def test_restarts_are_never_worse(model_and_batch):
    model, x, y = model_and_batch
    eps, alpha = 2 / 255, 0.5 / 255  # a weak attack, so restarts have something to add
    torch.manual_seed(7)
    one = pgd_linf(model, x, y, eps=eps, alpha=alpha, steps=2, restarts=1)
    torch.manual_seed(7)  # the first of the restarts is exactly `one`
    many = pgd_linf(model, x, y, eps=eps, alpha=alpha, steps=2, restarts=4)
    assert (many - x).abs().max() <= eps + 1e-6 and many.min() >= 0 and many.max() <= 1
    with torch.no_grad():
        l1, lm = model(one), model(many)
    wrong1, wrongm = l1.argmax(1) != y, lm.argmax(1) != y
    loss1, lossm = (
        F.cross_entropy(l1, y, reduction="none"),
        F.cross_entropy(lm, y, reduction="none"),
    )
    assert not (wrong1 & ~wrongm).any()  # a sample fooled by the first restart stays fooled
    same = wrong1 == wrongm
    assert (lossm[same] >= loss1[same] - 1e-5).all()
    assert (lossm > loss1 + 1e-4).any()  # the extra restarts found something


def test_custom_objective_is_ascended(model_and_batch):
    model, x, y = model_and_batch

    def target_logit(logits, y):  # ascend the true-class logit: the opposite of the CE attack
        return logits.gather(1, y[:, None]).sum()

    torch.manual_seed(3)
    x_up = pgd_linf(model, x, y, eps=EPS, alpha=ALPHA, steps=5, objective=target_logit)
    assert _loss(model, x_up, y).mean() < _loss(model, x, y).mean()


def reference_pgd(model, x, y, eps, alpha, steps, restarts=1, eot=1, lo=0.0, hi=1.0, fp32=0):
    """PGD written out: uniform start, summed-CE sign steps (``eot`` gradients summed, the first
    ``fp32`` steps outside autocast), projection; per sample the restart that misclassifies it,
    then the one of highest loss (the first on ties)."""
    runs = []
    for _ in range(restarts):
        xa = (x + torch.empty(x.shape).uniform_(-eps, eps)).clamp(lo, hi)  # in NCHW order
        for k in range(steps):
            xa.requires_grad_(True)
            with torch.autocast("cpu", enabled=k >= fp32 and torch.is_autocast_enabled("cpu")):
                g = sum(
                    torch.autograd.grad(F.cross_entropy(model(xa).float(), y, reduction="sum"), xa)[
                        0
                    ]
                    for _ in range(eot)
                )
            xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(
                lo, hi
            )
        runs.append(xa.detach())
    if restarts == 1:
        return runs[0]
    with torch.no_grad():
        logits = torch.stack([model(r).float() for r in runs])
    loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(restarts), reduction="none")
    wrong = logits.argmax(2) != y
    loss = loss.view(restarts, -1).masked_fill(wrong.any(0) & ~wrong, float("-inf"))
    pick = loss.argmax(0)
    return torch.stack(runs)[pick, torch.arange(len(y))]


class Wrap(torch.nn.Module):
    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.model(self.fn(x))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"restarts": 2}, {"restarts": 4}, {"lo": 0.25, "hi": 0.75}],
    ids=["defaults", "2 restarts", "4 restarts", "range"],
)
def test_pgd_equals_the_reference_loop(model_and_batch, kwargs):
    model, x, y = model_and_batch
    eps, alpha = (2 / 255, 0.5 / 255) if "restarts" in kwargs else (EPS, ALPHA)
    torch.manual_seed(4)
    got = pgd_linf(model, x, y, eps=eps, alpha=alpha, **kwargs)
    torch.manual_seed(4)
    assert torch.equal(got, reference_pgd(model, x, y, eps, alpha, 10, **kwargs))


@pytest.mark.parametrize("eot", [None, 3])
def test_eot_sums_the_gradients_of_eot_random_forwards(model_and_batch, eot):
    model, x, y = model_and_batch
    noisy = Wrap(model, lambda z: z + 0.05 * torch.randn_like(z)).eval()
    torch.manual_seed(5)
    got = pgd_linf(noisy, x, y, steps=2, **({"eot": eot} if eot else {}))
    torch.manual_seed(5)
    assert torch.equal(got, reference_pgd(noisy, x, y, EPS, ALPHA, 2, eot=eot or 1))


@pytest.mark.parametrize("fp32", [None, 1])
def test_only_the_first_fp32_steps_leave_autocast(model_and_batch, fp32):
    model, x, y = model_and_batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(6)
        got = pgd_linf(model, x, y, steps=3, **({"fp32_steps": fp32} if fp32 else {}))
        torch.manual_seed(6)
        assert torch.equal(got, reference_pgd(model, x, y, EPS, ALPHA, 3, fp32=fp32 or 0))


def test_a_pixel_without_gradient_stays_put(model_and_batch):
    model, x, y = model_and_batch
    mask = torch.ones_like(x[:1])
    mask[..., :4, :] = 0  # the model never sees the top rows

    x_adv = pgd_linf(Wrap(model, lambda z: z * mask).eval(), x, y, steps=3, random_start=False)
    assert torch.equal(x_adv[..., :4, :], x[..., :4, :])
    assert (x_adv[..., 4:, :] != x[..., 4:, :]).any()


def test_the_random_start_does_not_depend_on_the_memory_format(model_and_batch):
    model, x, y = model_and_batch
    torch.manual_seed(8)
    a = pgd_linf(model, x, y, steps=0)
    torch.manual_seed(8)
    b = pgd_linf(model, x.contiguous(memory_format=torch.channels_last), y, steps=0)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_the_pieces_of_the_attack():
    from bench.attacks.pgd import as_iterate, ce_objective
    from bench.core.timing import measure_regions

    x = torch.tensor([1.0, 0.0, 0.45])
    assert torch.equal(
        project_linf(torch.tensor([1.5, -0.5, 0.5]), x, 0.6), torch.tensor([1.0, 0.0, 0.5])
    )
    assert as_iterate(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64
    assert as_iterate(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    logits, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    assert torch.equal(ce_objective(logits, y), F.cross_entropy(logits, y, reduction="sum"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    with measure_regions(torch.device("cpu")) as regions:
        pgd_linf(model, torch.rand(4, 3, 2, 2), y, steps=1)
    assert set(regions) == {"attack"} and regions["attack"] > 0


def test_restarts_keep_per_sample_the_fooling_restart_then_the_highest_loss():
    """Starts given as logits (the model is the identity, y = 0, no steps): per sample, a restart
    that fools the model beats one of higher loss that does not, and ties keep the earlier one."""
    right_hi, wrong_lo = [1.0, 0.99, 0.99], [1.0, 1.01, -10.0]  # CE 1.09 (right) and 0.70 (fooled)
    right_lo, same_loss, lowest = [2.0, 0.0, 0.0], [0.0, -2.0, -2.0], [5.0, 0.0, 0.0]
    restarts = [  # sample 0, 1, 2 in each restart
        [right_hi, wrong_lo, right_lo],
        [wrong_lo, right_lo, same_loss],
        [right_hi, right_hi, lowest],
    ]
    starts = iter(torch.tensor(restarts)[:, :, None, None, :])
    x, y = torch.zeros(3, 1, 1, 3), torch.zeros(3, dtype=torch.long)
    got = pgd_linf(torch.nn.Flatten(), x, y, steps=0, restarts=3, start=lambda c: next(starts))
    assert torch.equal(got.flatten(1), torch.tensor([wrong_lo, wrong_lo, right_lo]))
