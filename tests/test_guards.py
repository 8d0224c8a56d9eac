"""Guardrails on robustness numbers, and the intervals every accuracy carries.

A normal model passes every check; a model with a rounding step (zero input gradients), one with
test-time noise inside its forward (random), an attack outside eps, a forward in train mode or
under autocast, and AutoAttack doing worse than PGD are each flagged ``reliable: false`` with the
reason. Intervals are checked against scipy.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import scipy.stats
import torch
from test_eval_metrics import Tiny as Net  # a small conv net: 4 x logits of conv-relu-pool-linear

from metrics import EvalContext, evaluate
from metrics.base import METRICS
from metrics.guards import ForwardWatch, PerturbationMeter, apply_ordering
from metrics.intervals import accuracy_interval, t_interval, wilson


class Quantised(Net):
    """Input quantised to 8 levels: the rounding has zero gradient everywhere."""

    def forward(self, x):
        return super().forward(torch.round(x * 7) / 7)


class Noisy(Net):
    """Test-time noise inside the forward: a randomised defence."""

    def forward(self, x):
        return super().forward((x + 0.05 * torch.randn_like(x)).clamp(0, 1))


def data(n=32):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return SimpleNamespace(name="syn", x_train=x, y_train=y, x_test=x, y_test=y, num_classes=10)


def ctx(tmp_path):
    return EvalContext(
        device=torch.device("cpu"), batch_size=16, seed=0, out_dir=tmp_path, show_progress=False
    )


PGD = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 5, "n_examples": 32}


def pgd(model, tmp_path, **settings):
    return METRICS.get("pgd")(model, data(), {**PGD, **settings}, ctx(tmp_path))


def test_a_normal_model_passes_every_check(tmp_path):
    res = pgd(Net().eval(), tmp_path)
    assert res["reliable"] is True and "unreliable_reasons" not in res
    assert set(res["checks"]) == {"forward", "perturbation", "gradients", "randomness"}
    assert all(c["passed"] for c in res["checks"].values())
    assert res["checks"]["forward"]["calls"] > 5 * 2  # every PGD step of both batches was watched
    assert 0 < res["checks"]["perturbation"]["max_linf"] <= 8 / 255 + 1e-6


def test_a_rounding_step_is_flagged_for_zero_gradients(tmp_path):
    res = pgd(Quantised().eval(), tmp_path)
    assert res["reliable"] is False
    assert res["checks"]["gradients"]["zero"] == 16  # the first batch
    assert any(
        r.startswith("gradients: 16 of 16 images have a zero input gradient")
        for r in res["unreliable_reasons"]
    )


def test_a_random_forward_needs_eot(tmp_path):
    res = pgd(Noisy().eval(), tmp_path)
    assert res["reliable"] is False and not res["checks"]["randomness"]["passed"]
    assert "the attack used no EOT" in res["checks"]["randomness"]["detail"]
    res = pgd(Noisy().eval(), tmp_path, eot=4)
    assert res["checks"]["randomness"]["passed"] and res["eot"] == 4 and res["reliable"] is True


def test_the_forward_watch_sees_train_mode_autocast_and_range():
    model = Net()
    with ForwardWatch(model) as watch:
        model.train()
        model(torch.rand(2, 3, 8, 8))
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.rand(2, 3, 8, 8))
        model(torch.rand(2, 3, 8, 8) * 2 - 0.5)
        model(torch.rand(2, 3, 8, 8).double().float().half().float())
    res = watch.result()
    assert not res["passed"] and res["calls"] == 4
    assert (
        "1 of 4 forward passes in train mode" in res["detail"]
        and "1 under autocast" in res["detail"]
    )
    assert "not [0, 1]" in res["detail"]
    with ForwardWatch(model) as clean:
        model(torch.rand(2, 3, 8, 8))
    assert clean.result()["passed"]
    model(torch.rand(2, 3, 8, 8))  # after the block the hook is gone
    assert clean.calls == 1


def test_the_perturbation_meter_flags_a_step_outside_eps():
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    meter = PerturbationMeter()
    meter.add(x, x + 8 / 255)
    assert meter.result(8 / 255)["passed"]
    meter.add(x, x + 9 / 255)
    res = meter.result(8 / 255)
    assert not res["passed"] and "exceeds eps 8/255" in res["detail"]


def test_the_perturbation_meter_takes_the_largest_pixel_not_the_mean():
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    x_adv = x.clone()
    x_adv[2, 1, 3, 5] += 9 / 255  # one pixel of one image over eps, every other pixel unmoved
    meter = PerturbationMeter()
    meter.add(x, x)
    meter.add(x, x_adv)
    meter.add(x, x + 4 / 255)  # a later batch with a smaller distance does not lower the maximum
    res = meter.result(8 / 255)
    assert not res["passed"] and res["max_linf"] == pytest.approx(9 / 255, abs=1e-6)
    assert res["detail"] == "max l-inf perturbation 9/255 exceeds eps 8/255"


def test_autoattack_weaker_than_pgd_is_flagged():
    results = {
        "pgd": {"accuracy": 0.30, "clean_accuracy": 0.8, "n_examples": 100, "eps": 8 / 255},
        "autoattack": {"accuracy": 0.35, "clean_accuracy": 0.8, "n_examples": 100, "eps": 8 / 255},
    }
    apply_ordering(results)
    assert results["pgd"]["reliable"] is True
    assert results["autoattack"]["reliable"] is False
    assert "AutoAttack 35.00% above PGD 30.00%" in results["autoattack"]["unreliable_reasons"][0]
    # a different eps or n is not comparable: no ordering between the two
    other = {
        "pgd": {"accuracy": 0.30, "n_examples": 100, "eps": 8 / 255},
        "autoattack": {"accuracy": 0.35, "n_examples": 100, "eps": 4 / 255},
    }
    apply_ordering(other)
    assert "checks" not in other["autoattack"]


def test_autoattack_is_ordered_against_a_pgd_result_stored_earlier():
    aa = {"accuracy": 0.35, "clean_accuracy": 0.8, "n_examples": 100, "eps": 8 / 255}
    stored = {"pgd": {"accuracy": 0.30, "n_examples": 100, "settings": {"eps": 8 / 255}}}
    results = {"autoattack": dict(aa)}
    apply_ordering(results, stored)
    assert results["autoattack"]["reliable"] is False
    assert results["autoattack"]["unreliable_reasons"] == [
        "ordering: AutoAttack 35.00% above PGD 30.00% at the same eps and images: the stronger "
        "attack did worse (gradient masking or a bug)"
    ]
    assert "checks" not in stored["pgd"] and "pgd" not in results  # the stored one is unchanged
    # a PGD result of this evaluation replaces the stored one
    results = {"autoattack": dict(aa), "pgd": {**stored["pgd"], "accuracy": 0.40}}
    apply_ordering(results, stored)
    assert results["autoattack"]["reliable"] is True
    assert (
        results["autoattack"]["checks"]["ordering"]["detail"]
        == "robust <= clean; AutoAttack <= PGD"
    )


@pytest.mark.parametrize("name", ["pgd", "autoattack"])
def test_robust_accuracy_above_clean_is_flagged(name):
    results = {name: {"accuracy": 0.81, "clean_accuracy": 0.8, "n_examples": 100, "eps": 8 / 255}}
    apply_ordering(results)
    assert results[name]["reliable"] is False
    assert results[name]["unreliable_reasons"] == [
        "ordering: robust accuracy 81.00% above clean 80.00% on the same images"
    ]
    results = {name: {"accuracy": 0.8, "clean_accuracy": 0.8, "n_examples": 100, "eps": 8 / 255}}
    apply_ordering(results)
    assert results[name]["reliable"] is True
    assert results[name]["checks"]["ordering"] == {"passed": True, "detail": "robust <= clean"}


def test_autoattack_on_a_random_model_is_unreliable_and_keeps_the_library_warning(tmp_path):
    settings = {
        "version": "custom",
        "attacks": ["apgd-ce"],
        "eps": 8 / 255,
        "apgd_iter": 3,
        "n_examples": 16,
    }
    res = METRICS.get("autoattack")(Noisy().eval(), data(), settings, ctx(tmp_path))
    assert res["reliable"] is False
    assert not res["checks"]["randomness"]["passed"] and not res["checks"]["library"]["passed"]
    assert "randomized defense" in res["checks"]["library"]["detail"]
    res = METRICS.get("autoattack")(Net().eval(), data(), settings, ctx(tmp_path))
    assert res["reliable"] is True, res.get("unreliable_reasons")
    assert {"forward", "perturbation", "randomness", "library"} <= set(res["checks"])


def test_the_paper_eot_protocol_draws_noise_per_forward_and_attacks_with_eot(tmp_path):
    res = evaluate(
        Net().eval(),
        data(),
        "paper-eot",
        16,
        ctx(tmp_path),
        metrics=["clean", "pgd"],
        overrides={"pgd": {"steps": 2, "eot": 3}},
    )
    pgd = res["pgd[eot=3,steps=2]"]  # settings changed from the protocol's: a result of its own
    assert pgd["settings"]["input_noise_drawn"] == "every forward pass"
    assert (
        pgd["checks"]["randomness"]["passed"]
        and "attacked with EOT 3" in pgd["checks"]["randomness"]["detail"]
    )
    paper = evaluate(
        Net().eval(),
        data(),
        "paper",
        16,
        ctx(tmp_path),
        metrics=["pgd"],
        overrides={"pgd": {"steps": 2}},
    )
    # noise drawn once per image: the attacked function is deterministic, so no EOT is needed
    check = paper["pgd[steps=2]"]["checks"]["randomness"]
    assert check["passed"] and "deterministic" in check["detail"]


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (656, 1000), (1, 200)])
def test_wilson_interval_matches_scipy(k, n):
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert accuracy_interval(k / n, n) == pytest.approx([ci.low, ci.high], abs=1e-6)


def test_every_accuracy_result_carries_its_interval(tmp_path):
    res = evaluate(Net().eval(), data(), "quick", 32, ctx(tmp_path))
    for name in ("clean", "pgd"):
        k = round(res[name]["accuracy"] * 32)
        assert res[name]["accuracy_ci95"] == pytest.approx(list(wilson(k, 32)), abs=1e-6)


def test_t_interval_matches_scipy():
    vals = [0.61, 0.64, 0.59, 0.66]
    m, half = t_interval(vals)
    lo, hi = scipy.stats.t.interval(
        0.95, len(vals) - 1, loc=sum(vals) / 4, scale=scipy.stats.sem(vals)
    )
    assert m == pytest.approx((lo + hi) / 2) and half == pytest.approx((hi - lo) / 2)
    assert t_interval([0.5])[0] == 0.5
