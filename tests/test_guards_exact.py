"""The guardrail helpers and intervals to the exact value: every field, boundary and message of
the checks, so that a one-token change in metrics/guards.py or metrics/intervals.py fails a test
(the mutation run of docs/reliability.md, "Mutation testing")."""

from __future__ import annotations

import pytest
import scipy.stats
import torch

from metrics.guards import (
    TOL,
    ForwardWatch,
    PerturbationMeter,
    RunningRange,
    apply_ordering,
    randomness_check,
    verdict,
    zero_gradient_check,
)
from metrics.intervals import accuracy_interval, t_interval, wilson


def running(*values):
    r = RunningRange()
    for v in values:
        r.add(torch.tensor(v, dtype=torch.float64))
    return r


def test_the_running_range_spans_every_tensor_and_flags_only_beyond_the_slack():
    assert RunningRange().bounds() == (0.0, 1.0)
    assert running([0.2, 0.5], [0.1, 0.9], [0.3, 0.4]).bounds() == (0.1, 0.9)
    assert running([-TOL, 1 + TOL]).outside_unit("x") is None
    assert running([-0.5, 0.5]).outside_unit("x") == "x in [-0.5, 0.5], not [0, 1]"
    assert running([0.5, 1.5]).outside_unit("x") == "x in [0.5, 1.5], not [0, 1]"


class Keyword(torch.nn.Module):
    def forward(self, x=None):
        return x


def test_the_forward_watch_names_each_problem_exactly():
    model = Keyword()
    with ForwardWatch(model) as watch:
        model(x=torch.rand(2))  # no positional input: not counted
        model.train()
        model(torch.tensor([0.12345678, 0.5]))
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.tensor([0.5]))
        model(torch.tensor([0.5, 1.23456789], dtype=torch.float64))
        model(torch.tensor([0.5], dtype=torch.float16))
    assert watch.result() == {
        "passed": False,
        "detail": "1 of 4 forward passes in train mode; 1 under autocast; inputs in float16, "
        "float64; inputs in [0.1235, 1.235], not [0, 1]",
        "calls": 4,
        "input_min": 0.123457,
        "input_max": 1.234568,
    }
    with ForwardWatch(model) as clean:
        model(torch.tensor([0.25, 0.75]))
    assert clean.result() == {
        "passed": True,
        "detail": "1 forward passes, all in eval mode, fp32, no autocast, inputs in [0, 1]",
        "calls": 1,
        "input_min": 0.25,
        "input_max": 0.75,
    }


def test_the_perturbation_meter_reports_exactly():
    assert PerturbationMeter().result(8 / 255) == {
        "passed": True,
        "detail": "no adversarial examples returned",
        "max_linf": 0.0,
    }
    x = torch.full((2, 3), 0.5)
    meter = PerturbationMeter()
    meter.add(x, x + 4 / 255)
    assert meter.result(8 / 255) == {
        "passed": True,
        "detail": "max l-inf perturbation 4/255 <= eps 8/255, in [0, 1]",
        "max_linf": 0.01568627,  # float32 0.0156862735...: 8 digits
    }
    boundary = PerturbationMeter()
    boundary.add(x, x + 0.25)  # exactly eps + TOL: within the slack
    assert boundary.result(0.25 - TOL)["passed"]
    outside = PerturbationMeter()
    edge = torch.tensor([[0.5, 0.5, 1.0], [0.5, 0.0, 0.5]])
    outside.add(edge, torch.tensor([[0.5, 0.5, 1.02], [0.5, -0.01, 0.5]]))
    assert outside.result(8 / 255)["detail"] == "adversarial images in [-0.01, 1.02], not [0, 1]"
    assert not outside.result(8 / 255)["passed"]
    assert outside.result(1 / 255)["detail"] == (
        "max l-inf perturbation 5.1/255 exceeds eps 1/255; "
        "adversarial images in [-0.01, 1.02], not [0, 1]"
    )


class Tied(torch.nn.Module):
    """Logits (s, s, 0, ...) with s the image's pixel sum: classes 0 and 1 move together, so the
    margin of class 0 over the best other class has a zero gradient; that of class 2 does not."""

    def forward(self, x):
        s = x.flatten(1).sum(1)
        return torch.stack([s, s, torch.zeros_like(s), torch.zeros_like(s)], 1)


def test_the_zero_gradient_check_takes_the_margin_over_the_best_other_class():
    x = torch.stack([torch.full((2, 2), v) for v in (0.1, 0.2, 0.3)])  # distinct sums
    assert zero_gradient_check(Tied(), x, torch.tensor([0, 0, 2])) == {
        "passed": False,
        "detail": "2 of 3 images have a zero input gradient (a non-differentiable step such as "
        "quantisation?): gradient attacks cannot move them; use an adaptive attack (BPDA)",
        "zero": 2,
        "of": 3,
    }
    assert zero_gradient_check(Tied(), x, torch.tensor([2, 3, 2])) == {
        "passed": True,
        "detail": "all 3 images of the first batch have a non-zero input gradient",
        "zero": 0,
        "of": 3,
    }


def test_the_randomness_check_in_each_case():
    assert randomness_check(False, 0.0, 1) == {
        "passed": True,
        "detail": "two forward passes of the same batch agree: the model is deterministic",
        "eot": 1,
    }
    assert randomness_check(True, 0.25, 2) == {
        "passed": True,
        "detail": "the forward is random (relative difference 0.25); attacked with EOT 2",
        "eot": 2,
    }
    assert randomness_check(True, 0.25, 1) == {
        "passed": False,
        "detail": "the forward is random (two passes differ by 0.25) and the attack used no EOT: "
        "use a protocol with EOT (e.g. paper-eot) or --set pgd.eot=20 / autoattack.version=rand",
        "eot": 1,
    }


def test_a_verdict_keeps_earlier_checks_and_drops_stale_reasons():
    failed = {"passed": False, "detail": "bad"}
    stale = {
        "accuracy": 0.5,
        "checks": {"old": failed},
        "reliable": False,
        "unreliable_reasons": [],
    }
    assert verdict(stale, {"new": {"detail": "no passed key: counts as passed"}}) == {
        "accuracy": 0.5,
        "checks": {"old": failed, "new": {"detail": "no passed key: counts as passed"}},
        "reliable": False,
        "unreliable_reasons": ["old: bad"],
    }
    fixed = verdict(stale, {"old": {"passed": True, "detail": "ok"}})
    assert fixed == {
        "accuracy": 0.5,
        "checks": {"old": {"passed": True, "detail": "ok"}},
        "reliable": True,
    }


def test_ordering_skips_results_without_a_numeric_accuracy_and_is_exact_at_its_boundaries():
    results = {"pgd": {"n_examples": 5}, "autoattack": {"accuracy": True, "clean_accuracy": 0.5}}
    apply_ordering(results)
    assert results == {
        "pgd": {"n_examples": 5},
        "autoattack": {"accuracy": True, "clean_accuracy": 0.5},
    }
    # equal numbers, and differences of exactly the tolerance, are in order
    aa = {"accuracy": 0.5 + TOL, "clean_accuracy": 0.5, "n_examples": 10, "settings": {"eps": 0.1}}
    for pgd_acc in (0.5, 0.5 + TOL):
        results = {
            "autoattack": dict(aa),
            "pgd": {"accuracy": pgd_acc, "n_examples": 10, "eps": 0.1},
        }
        apply_ordering(results)
        assert results["autoattack"]["checks"]["ordering"] == {
            "passed": True,
            "detail": "robust <= clean; AutoAttack <= PGD",
        }
    # the eps of the AutoAttack result may sit in its settings, as that of PGD
    results = {"autoattack": dict(aa), "pgd": {"accuracy": 0.4, "n_examples": 10, "eps": 0.1}}
    apply_ordering(results)
    assert results["autoattack"]["reliable"] is False


@pytest.mark.parametrize("k, n", [(0, 0), (0, 1), (1, 1), (1, 2)])
def test_wilson_at_the_smallest_n(k, n):
    if n == 0:
        assert wilson(k, n) == (0.0, 1.0)
        return
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_accuracy_interval_rounds_to_six_digits():
    lo, hi = wilson(656, 1000)
    assert accuracy_interval(0.656, 1000) == [round(lo, 6), round(hi, 6)]
    assert round(lo, 7) != round(lo, 6) and round(hi, 7) != round(hi, 6)


def test_t_interval_of_two_values():
    m, half = t_interval([0.5, 0.7])
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=0.6, scale=scipy.stats.sem([0.5, 0.7]))
    assert m == pytest.approx(0.6) and half == pytest.approx((hi - lo) / 2)
