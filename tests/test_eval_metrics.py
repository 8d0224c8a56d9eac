"""energy and calibration metrics against direct computations; protocols' settings, noise and skipping."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn

from metrics import EvalContext, evaluate
from metrics.base import METRICS
from metrics.engine import preflight
from metrics.protocols import PROTOCOLS, get_protocol


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        )

    def forward(self, x):
        return 4 * self.net(x)


def data(n=40):
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return SimpleNamespace(name="syn", x_train=x, y_train=y, x_test=x, y_test=y, num_classes=10)


def ctx(tmp_path, **inputs):
    return EvalContext(
        device=torch.device("cpu"),
        batch_size=16,
        seed=0,
        out_dir=tmp_path,
        show_progress=False,
        **inputs,
    )


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TRILEMMA_OFFLINE", "1")


def test_calibration_matches_direct_ece(tmp_path):
    model, d = Tiny().eval(), data()
    out = METRICS.get("calibration")(model, d, {"bins": 15, "n_examples": 40}, ctx(tmp_path))
    with torch.no_grad():
        p = model(d.x_test.float() / 255).softmax(1)
    conf, pred = p.max(1)
    correct = (pred == d.y_test).numpy()
    conf = conf.numpy()
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    assert out["ece"] == pytest.approx(ece, abs=1e-6) and out["ece"] > 0
    assert out["n_examples"] == 40 and sum(out["bin_counts"]) == 40
    assert (tmp_path / out["artifacts"]["reliability_diagram"]).stat().st_size > 1000


def test_energy_gaps_and_w1(tmp_path):
    model, d = Tiny().eval(), data()
    gen = torch.zeros(30, 8, 8, 3, dtype=torch.uint8)  # a constant image set with its own energy
    np.savez(tmp_path / "gen.npz", x=gen.numpy())
    out = METRICS.get("energy")(
        model,
        d,
        {"n_examples": 40, "attack": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 5}},
        ctx(tmp_path, samples=str(tmp_path / "gen.npz"), protocol="standard"),
    )
    with torch.no_grad():
        e_clean = -torch.logsumexp(model(d.x_test.float() / 255), 1).double().numpy()
        e_gen = -torch.logsumexp(model(gen.permute(0, 3, 1, 2).float() / 255), 1).double().numpy()
    assert out["mean_clean"] == pytest.approx(e_clean.mean(), rel=1e-5)
    assert out["mean_gen"] == pytest.approx(e_gen.mean(), rel=1e-5) and out["n_generated"] == 30
    assert out["gap_gen"] == pytest.approx(e_gen.mean() - e_clean.mean(), rel=1e-4, abs=1e-5)
    assert out["w1_gen"] == pytest.approx(
        scipy.stats.wasserstein_distance(e_clean, e_gen), rel=1e-4
    )
    assert (
        out["gap_adv"] == pytest.approx(out["mean_adv"] - out["mean_clean"]) and out["w1_adv"] >= 0
    )
    assert (tmp_path / out["artifacts"]["energy_histogram"]).name == "standard-energy.png"

    # without any source of generated samples the generated part is n/a, not an error
    out2 = METRICS.get("energy")(
        model, d, {"n_examples": 8, "attack": {"steps": 2}}, ctx(tmp_path / "b")
    )
    assert out2["gap_gen"] is None and out2["n_generated"] == 0 and "generated: n/a" in out2["note"]


def test_protocols_are_documented_and_optional_metrics_skip(tmp_path):
    assert {"quick", "standard", "paper"} <= set(PROTOCOLS)
    std, paper = get_protocol("standard"), get_protocol("paper")
    assert std.metrics["autoattack"] == {"version": "standard", "norm": "Linf", "eps": 8 / 255}
    assert paper.metrics["autoattack"]["eps"] == pytest.approx(
        4 / 255
    ) and paper.input_noise == pytest.approx(0.015)
    assert paper.metrics["autoattack"]["attacks"] == ["apgd-ce", "apgd-dlr", "square"]
    assert (
        "4/255" in paper.description and "0.03" in paper.description and "8/255" in std.description
    )
    names, skipped = preflight("standard", None, ctx(tmp_path))
    assert {"fid", "kid", "is"} == set(skipped) and "autoattack" in names and "energy" in names
    assert all("\n" not in why for why in skipped.values())


def test_paper_protocol_noise_is_recorded_and_applied(tmp_path):
    model, d = Tiny().eval(), data()
    c = ctx(tmp_path)
    clean_std = evaluate(model, d, "quick", 40, c, ["clean"])["clean"]
    res = evaluate(model, d, "paper", 40, c, ["clean"])["clean"]
    assert res["protocol"] == "paper" and res["settings"]["input_noise"] == pytest.approx(0.015)
    assert res["n_examples"] == 40 and res["loss"] != clean_std["loss"]  # the noisy images differ
    again = evaluate(model, d, "paper", 40, c, ["clean"])["clean"]
    assert again["loss"] == res["loss"]  # the noise is drawn once with the seed: reproducible


def test_a_protocol_setting_a_metric_does_not_read_is_refused_and_pgd_refuses_another_norm(
    tmp_path,
):
    """A protocol's metric settings are stored with its results, so each must be one the metric
    applies: an unknown key, or an l2 PGD that would silently run l-inf, is one line; and a
    plugin cannot silently redefine a built-in protocol."""
    import torch

    from bench.core.errors import BenchError
    from metrics.base import EvalContext
    from metrics.engine import preflight
    from metrics.protocols import PROTOCOLS, Protocol, register_protocol

    ctx = EvalContext(
        device=torch.device("cpu"), batch_size=8, seed=0, out_dir=None, show_progress=False
    )
    register_protocol(
        Protocol(name="test-typo", description="x", metrics={"clean": {}, "pgd": {"stepz": 3}})
    )
    register_protocol(
        Protocol(name="test-l2", description="x", metrics={"pgd": {"norm": "L2", "eps": 0.5}})
    )
    try:
        with pytest.raises(
            BenchError, match="protocol test-typo gives metric pgd the setting 'stepz'"
        ):
            preflight("test-typo", None, ctx)
        # norm is a setting pgd reads, and its range refuses L2 before anything runs ...
        with pytest.raises(BenchError, match=r"test-l2's pgd.norm='L2' is out of range.*Linf"):
            preflight("test-l2", None, ctx)
        from metrics import METRICS

        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        data = SimpleNamespace(
            x_test=torch.zeros(4, 3, 2, 2, dtype=torch.uint8),
            y_test=torch.zeros(4, dtype=torch.long),
        )
        with pytest.raises(
            BenchError, match="l-inf norm only"
        ):  # ... and refuses what it cannot do
            METRICS.get("pgd")(model, data, {"norm": "L2", "eps": 0.5}, ctx)
        with pytest.raises(ValueError, match="already registered"):
            register_protocol(Protocol(name="standard", description="mine", metrics={"clean": {}}))
        assert PROTOCOLS.get("standard").description != "mine"
    finally:
        PROTOCOLS.unregister("test-typo")
        PROTOCOLS.unregister("test-l2")


class NoisyTiny(Tiny):
    def forward(self, x):
        return super().forward(x + 0.01 * torch.randn_like(x))


def test_energy_reuses_the_pgd_metrics_adversarial_examples_exactly(tmp_path):
    model, d = Tiny().eval(), data()
    c = ctx(tmp_path / "both")
    both = evaluate(model, d, "demo", 40, c, skipped={})
    assert both["energy"]["adversarial_source"].startswith("the pgd metric's")
    assert not c.adversarial  # dropped when the evaluation ends
    alone = evaluate(model, d, "demo", 40, ctx(tmp_path / "alone"), metrics=["energy"])["energy"]
    assert alone["adversarial_source"] == "attacked here"
    for key in ("mean_adv", "std_adv", "gap_adv", "w1_adv", "mean_clean"):
        assert both["energy"][key] == alone[key], key  # the same examples, not merely similar ones
    kept = np.load(tmp_path / "both" / "figures" / "demo-energy.npz")["adversarial"]
    fresh = np.load(tmp_path / "alone" / "figures" / "demo-energy.npz")["adversarial"]
    assert np.array_equal(kept, fresh)


def test_energy_attacks_again_when_the_attack_or_the_model_differs(tmp_path):
    d = data()
    other = evaluate(
        Tiny().eval(),
        d,
        "demo",
        40,
        ctx(tmp_path / "a"),
        skipped={},
        overrides={"energy": {"attack": {"eps": 8 / 255, "alpha": 2 / 255, "steps": 3}}},
    )
    assert (
        other["energy[attack={alpha=0.007843,eps=0.03137,steps=3}]"]["adversarial_source"]
        == "attacked here"
    )
    noisy = evaluate(NoisyTiny().eval(), d, "demo", 40, ctx(tmp_path / "b"), skipped={})
    assert (
        noisy["energy"]["adversarial_source"] == "attacked here"
    )  # a random forward: examples differ per run
