"""MART: the loss against its formula on fixed logits, where its gradient flows, the step against
the reference loop written out, the reference settings, and a tiny run through the CLI."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.core.config import ModelConfig
from bench.core.errors import BenchError
from bench.models import build_model
from bench.run.resolve import resolve_config
from methods import get_method
from methods.base import StepContext
from methods.mart import mart_terms

EPS, ALPHA = 8 / 255, 2 / 255

# clean and adversarial logits of 4 images over 4 classes: a confident correct image (small weight
# 1 - p_y), a misclassified one (weight near 1), one whose attack flips the prediction, one uncertain
LOGITS = [
    [4.0, 0.5, -1.0, 0.0],
    [0.2, 3.0, -0.5, 1.0],
    [-1.0, 0.0, 2.5, 0.3],
    [0.1, 0.0, -0.2, 0.3],
]
LOGITS_ADV = [
    [2.0, 1.5, -0.5, 0.2],
    [0.0, 3.5, 0.5, 0.8],
    [0.5, 2.2, 1.0, -0.4],
    [0.4, -0.3, 0.9, 0.6],
]
LABELS = [0, 3, 2, 1]


def softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def hand_terms(logits, logits_adv, labels):
    """The paper's BCE and weighted KL with the reference code's constants, one image at a time."""
    ce, boost, kl_w = 0.0, 0.0, 0.0
    for z, za, y in zip(logits, logits_adv, labels):
        p, q = softmax(z), softmax(za)
        ce += -math.log(q[y])
        top_wrong = max(q[k] for k in range(len(q)) if k != y)
        boost += -math.log(1.0001 - top_wrong + 1e-12)
        kl = sum(pk * (math.log(pk) - math.log(qk + 1e-12)) for pk, qk in zip(p, q))
        kl_w += kl * (1.0000001 - p[y])
    n = len(labels)
    return ce / n, boost / n, kl_w / n


def test_loss_equals_the_hand_written_formula_on_fixed_logits():
    terms = mart_terms(torch.tensor(LOGITS), torch.tensor(LOGITS_ADV), torch.tensor(LABELS))
    ce, boost, kl_w = hand_terms(LOGITS, LOGITS_ADV, LABELS)
    assert float(terms["ce_adv"]) == pytest.approx(ce, rel=1e-6)
    assert float(terms["boost"]) == pytest.approx(boost, rel=1e-5)
    assert float(terms["kl"]) == pytest.approx(kl_w, rel=1e-5)
    method = get_method("mart").from_dict({})
    assert method.loss_weights() == {"ce_adv": 1.0, "boost": 1.0, "kl": 6.0}
    total = float(sum(w * terms[k] for k, w in method.loss_weights().items()))
    assert total == pytest.approx(ce + boost + 6 * kl_w, rel=1e-5)
    # the case is one where dropping the boosted term or the (1 - p_y) weighting shows
    unweighted = sum(
        sum(pk * (math.log(pk) - math.log(qk + 1e-12)) for pk, qk in zip(softmax(z), softmax(za)))
        for z, za in zip(LOGITS, LOGITS_ADV)
    ) / len(LABELS)
    assert abs(total - (ce + 6 * kl_w)) > 0.3 and abs(total - (ce + boost + 6 * unweighted)) > 0.3


def test_gradient_reaches_the_clean_forward_through_the_kl_and_its_weight():
    """As the reference: p(x) in the KL and the weight 1 - p_y(x) are not detached, and the boosted
    term sees only the adversarial logits."""
    y = torch.tensor(LABELS)

    def grads(fn):
        z = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
        za = torch.tensor(LOGITS_ADV, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(fn(z, za), (z, za), allow_unused=True)

    def kl_w(z, za, detach_p=False, detach_w=False):
        p, q = F.softmax(z, 1), F.softmax(za, 1)
        pk = p.detach() if detach_p else p
        w = 1.0000001 - (p.detach() if detach_w else p)[torch.arange(4), y]
        return ((pk * (pk.log() - (q + 1e-12).log())).sum(1) * w).sum() / 4

    got = grads(lambda z, za: mart_terms(z.float(), za.float(), y)["kl"].double())
    want = grads(kl_w)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    for variant in (
        dict(detach_p=True),
        dict(detach_w=True),
    ):  # what a detaching implementation computes
        other = grads(lambda z, za: kl_w(z, za, **variant))
        assert (other[0] - got[0]).abs().max() > 1e-2
    g_clean, g_adv = grads(lambda z, za: mart_terms(z.float(), za.float(), y)["boost"].double())
    assert g_clean is None  # the boosted CE reads the adversarial logits only
    assert g_adv.abs().max() > 0.01


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="resnet8", mean=(0.0,) * 3, std=(1.0,) * 3), num_classes=10)


def reference_step(model, x, y, noise, beta=6.0, steps=10):
    """MART's step written out from the paper and the reference loop: PGD on the mean CE in eval mode
    from x + 0.001 noise, then train-mode forwards (clean, adversarial) and the loss."""
    model.eval()
    xa = x + 0.001 * noise
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        xa = torch.min(torch.max(xa.detach() + ALPHA * g.sign(), x - EPS), x + EPS).clamp(0.0, 1.0)
    model.train()
    logits, logits_adv = model(x), model(xa.detach())
    q = F.softmax(logits_adv, 1)
    top2 = q.argsort(1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = (
        F.cross_entropy(logits_adv, y)
        - torch.log(1.0001 - q[torch.arange(len(y)), wrong] + 1e-12).mean()
    )
    p = F.softmax(logits, 1)
    kl = (p * (p.log() - torch.log(q + 1e-12))).sum(1)
    return xa.detach(), bce + beta * (kl * (1.0000001 - p[torch.arange(len(y)), y])).mean()


def test_training_step_matches_the_reference_loop(monkeypatch):
    import methods.mart as mart_mod

    calls = []
    real = mart_mod.pgd_linf
    monkeypatch.setattr(mart_mod, "pgd_linf", lambda *a, **k: calls.append(k) or real(*a, **k))
    method = get_method("mart").from_dict({})
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 16, 16, generator=g), torch.randint(0, 10, (6,), generator=g)
    model.train()
    with torch.no_grad():  # non-trivial running statistics: eval mode differs from train mode
        for k in range(3):
            model(x.roll(k, 0) * 0.9 + 0.05)
    ref = copy.deepcopy(model)
    ctx = StepContext(
        step=0, epoch=0, device=torch.device("cpu"), num_classes=10, autocast=contextlib.nullcontext
    )

    torch.manual_seed(11)
    terms = method.training_step(model, x, y, ctx)
    torch.manual_seed(11)
    xa, loss = reference_step(ref, x, y, torch.randn_like(x))

    assert (
        len(calls) == 1 and calls[0]["mode"] == "eval" and calls[0]["steps"] == 10
    )  # the shared PGD loop
    assert model.training
    torch.testing.assert_close(ctx.memo["x_adv"], xa, atol=1e-6, rtol=0)
    assert (xa - x).abs().max() <= EPS + 1e-6 and (xa - x).abs().max() > EPS - 1e-4
    total = sum(w * terms[k] for k, w in method.loss_weights().items())
    torch.testing.assert_close(total, loss, atol=1e-5, rtol=1e-5)
    # same weight gradients: the gradient flows where the reference's does
    got = torch.autograd.grad(total, list(model.parameters()))
    want = torch.autograd.grad(loss, list(ref.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for (name, b1), b2 in zip(
        model.named_buffers(), ref.buffers()
    ):  # the same forwards, in the same modes
        torch.testing.assert_close(b1.float(), b2.float(), atol=1e-6, rtol=0, msg=name)


def test_reference_settings_and_validation():
    cfg = resolve_config("mart", preset="paper")
    m = cfg.method_cfg
    assert (m["beta"], m["steps"], m["start_std"], m["attack_mode"]) == (6.0, 10, 0.001, "eval")
    assert m["eps"] == pytest.approx(8 / 255) and m["alpha"] == pytest.approx(2 / 255)
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.schedule, o.gamma) == (
        "sgd",
        0.1,
        0.9,
        7e-4,
        "step",
        0.1,
    )
    assert o.milestones == [74, 89, 99] and cfg.train.epochs == 90 and cfg.data.batch_size == 128
    assert (
        cfg.data.pad_mode == "zeros" and cfg.data.noise_std == 0 and cfg.model.arch == "wrn-34-10"
    )
    assert tuple(cfg.model.mean) == (0.0, 0.0, 0.0) and tuple(cfg.model.std) == (1.0, 1.0, 1.0)
    assert resolve_config("trades", preset="paper").model.arch == "wrn-34-10"
    assert m["eps_warmup_epochs"] == 0  # the ramp is the CPU presets' departure, not the reference
    assert resolve_config("mart", preset="smoke").method_cfg["steps"] == 3
    assert resolve_config("mart", preset="cpu").method_cfg["eps_warmup_epochs"] == 3
    for bad in (
        "method.attack_mode=sideways",
        "method.beta=-1",
        "method.steps=0",
        "method.eps_warmup_epochs=-1",
    ):
        with pytest.raises(BenchError):
            resolve_config("mart", preset="smoke", overrides=[bad])


def test_eps_warmup_ramps_the_attack(monkeypatch):
    import methods.mart as mart_mod

    calls = []
    real = mart_mod.pgd_linf
    monkeypatch.setattr(mart_mod, "pgd_linf", lambda *a, **k: calls.append(k) or real(*a, **k))
    method = get_method("mart").from_dict({"eps_warmup_epochs": 2.0, "steps": 1})
    model = tiny_model()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([1, 2])
    for step in (0, 9, 30):  # 10 steps per epoch: 1/20 of the ramp done, then half, then all of it
        ctx = StepContext(
            step=step,
            epoch=step // 10,
            device=torch.device("cpu"),
            num_classes=10,
            autocast=contextlib.nullcontext,
            steps_per_epoch=10,
        )
        terms = method.training_step(model, x, y, ctx)
        assert float(terms["eps"]) == pytest.approx(calls[-1]["eps"])
    assert [k["eps"] * 255 / 8 for k in calls] == pytest.approx([0.05, 0.5, 1.0])
    assert [k["alpha"] * 255 / 2 for k in calls] == pytest.approx([0.05, 0.5, 1.0])


@pytest.mark.slow
def test_bench_run_mart_smoke(bench_cli, results_root, tiny_args, shapes_data_dir):
    res = bench_cli("run", "--method", "mart", *tiny_args(results_root, shapes_data_dir))
    assert res.exit_code == 0, res.stderr
    run_dir = Path(re.search(r"^record: (.+)record\.json$", res.stdout, re.M).group(1))
    rec = json.loads((run_dir / "record.json").read_text())
    assert (
        rec["status"] == "complete"
        and rec["method"] == "mart"
        and rec["training"]["steps_done"] == 4
    )
    last = rec["training"]["history"][-1]
    assert {"ce_adv", "boost", "kl", "acc", "acc_adv", "eps"} <= set(last)
    assert last["loss"] == pytest.approx(last["ce_adv"] + last["boost"] + 6 * last["kl"], rel=1e-4)
    assert rec["config"]["method_cfg"]["steps"] == 3  # methods/mart.yaml, mart's smoke preset
    quick = rec["evaluations"]["quick"]
    assert quick["clean"]["n_examples"] == 32 and quick["pgd"]["n_examples"] == 32
    assert (run_dir / "checkpoints" / "last.pt").is_file()
