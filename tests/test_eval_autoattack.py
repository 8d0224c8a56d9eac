"""AutoAttack metric: the official library on a tiny model, per-attack report, and resuming."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from metrics.base import METRICS, EvalContext


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.net(x)


class Interrupter:
    """A forward pre-hook that raises KeyboardInterrupt (Ctrl-C) at the first forward once ``armed``."""

    def __init__(self, model):
        self.armed = False
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.armed:
            raise KeyboardInterrupt


def tiny_data(model, n=12):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        y = model(x.float() / 255).argmax(1)
    y[-2:] = (y[-2:] + 1) % 10  # two misclassified points
    return SimpleNamespace(x_test=x, y_test=y, name="tiny")


FAST = {
    "version": "custom",
    "attacks": ["apgd-ce", "square"],
    "eps": 8 / 255,
    "apgd_iter": 10,
    "square_queries": 40,
    "n_examples": 12,
}


def test_standard_autoattack_tiny_model(tmp_path):
    model = TinyNet().eval()
    data = tiny_data(model, n=8)
    ctx = EvalContext(
        device=torch.device("cpu"), batch_size=8, seed=0, out_dir=tmp_path, show_progress=False
    )
    # the official standard cascade, with fewer iterations/queries so that it runs in seconds
    settings = {
        "version": "standard",
        "eps": 8 / 255,
        "n_examples": 8,
        "apgd_iter": 10,
        "apgd_targeted_iter": 5,
        "fab_iter": 5,
        "square_queries": 50,
    }
    out = METRICS.get("autoattack")(model, data, settings, ctx)
    assert out["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert out["n_examples"] == 8
    assert out["clean_accuracy"] == pytest.approx(6 / 8)
    assert 0.0 <= out["accuracy"] <= out["clean_accuracy"]
    # every attack ran (points stayed robust to the end), and a cascade never gains robust points
    assert list(out["per_attack"]) == out["attacks"]
    accs = list(out["per_attack"].values())
    assert accs == sorted(accs, reverse=True)
    assert accs[-1] == pytest.approx(out["accuracy"])
    assert not list(
        (tmp_path / "autoattack").glob("*.json")
    )  # state removed once the result exists


def test_autoattack_resumes_from_state(tmp_path):
    base = TinyNet().eval()
    data = tiny_data(base)
    ctx = EvalContext(
        device=torch.device("cpu"), batch_size=4, seed=0, out_dir=tmp_path, show_progress=False
    )
    fn = METRICS.get("autoattack")

    wrapped = Interrupter(base)

    class ArmOnSquare(logging.Handler):
        def emit(self, record):
            if record.getMessage() == "running square":
                wrapped.armed = True

    arm = ArmOnSquare()
    logging.getLogger("auto-attack").addHandler(arm)
    try:
        with pytest.raises(KeyboardInterrupt):
            fn(base, data, dict(FAST), ctx)
    finally:
        logging.getLogger("auto-attack").removeHandler(arm)
        wrapped.handle.remove()
    states = list((tmp_path / "autoattack").glob("*.state.json"))
    assert len(states) == 1, "the interrupted evaluation must leave its state file in the run dir"

    # resume: apgd-ce must not run again; only square runs, on the points still robust
    seen = []

    class Listen(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    listen = Listen()
    logging.getLogger("auto-attack").addHandler(listen)
    try:
        out = fn(base, data, dict(FAST), ctx)
    finally:
        logging.getLogger("auto-attack").removeHandler(listen)
    assert out["resumed"] is True
    assert "running apgd-ce" not in seen and "running square" in seen
    assert out["clean_accuracy"] == pytest.approx(10 / 12)
    assert set(out["per_attack"]) == {"apgd-ce", "square"}
    assert out["accuracy"] <= out["per_attack"]["apgd-ce"] <= out["clean_accuracy"]
    assert out["per_attack"]["square"] == pytest.approx(out["accuracy"])
    assert not list((tmp_path / "autoattack").glob("*.json"))

    # a fresh evaluation (new out dir) starts from scratch and runs apgd-ce
    seen.clear()
    logging.getLogger("auto-attack").addHandler(listen)
    try:
        ctx2 = EvalContext(
            device=torch.device("cpu"),
            batch_size=4,
            seed=0,
            out_dir=tmp_path / "fresh",
            show_progress=False,
        )
        out2 = fn(base, data, dict(FAST), ctx2)
    finally:
        logging.getLogger("auto-attack").removeHandler(listen)
    assert out2["resumed"] is False and "running apgd-ce" in seen


def test_autoattack_reports_each_attack_as_it_finishes_and_is_silent_when_quiet(tmp_path, capsys):
    model = TinyNet().eval()
    data = tiny_data(model)
    loud = EvalContext(
        device=torch.device("cpu"),
        batch_size=12,
        seed=0,
        out_dir=tmp_path / "a",
        show_progress=True,
    )
    out = METRICS.get("autoattack")(model, data, dict(FAST), loud)
    err = capsys.readouterr().err
    assert "autoattack: apgd-ce, square on 12 of 12 points" in err
    for attack in out["per_attack"]:  # one line per attack that ran, with the robust count so far
        count = round(out["per_attack"][attack] * 12)
        assert f"autoattack: after {attack}: {count}/12 robust" in err
    quiet = EvalContext(
        device=torch.device("cpu"),
        batch_size=12,
        seed=0,
        out_dir=tmp_path / "q",
        show_progress=False,
    )
    METRICS.get("autoattack")(model, data, dict(FAST), quiet)
    assert "autoattack" not in capsys.readouterr().err
