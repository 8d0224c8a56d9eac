"""Every metric setting declares its type and range in the metric's registration (one schema, plugins
too), and the check is complete: a drawn value is either refused in one line naming the setting,
or accepted as a value of its type inside its range; a refused evaluation produces no result and an
accepted one a true result (issue 26, item 3)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import fuzz_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.errors import BenchError
from metrics import METRICS, EvalContext, evaluate
from metrics.base import COMMON_SETTINGS, Setting, metric_schema, register_metric
from metrics.engine import check_request
from metrics.protocols import PROTOCOLS, Protocol, register_protocol

BUILT_IN = [m for m in METRICS.names() if METRICS.get(m).__module__.startswith("metrics.")]
# free text: a path or a feature extractor's name, checked when it is used
FREE_TEXT = {"weights", "cache_dir", "feature_extractor"}
SETTINGS = [(m, k) for m in BUILT_IN for k in metric_schema(m) if k != "input_noise"]


def test_every_built_in_metric_setting_declares_a_type_and_a_range():
    assert {"clean", "pgd", "autoattack", "fid", "kid", "is", "energy", "calibration"} <= set(
        BUILT_IN
    )
    for metric in BUILT_IN:
        for key, s in metric_schema(metric).items():
            where = f"{metric}.{key}"
            assert isinstance(s, Setting) and s.kind is not Any, where
            if s.kind in (int, float):
                assert s.low is not None, f"{where} has no lower bound"
            elif s.kind is dict:
                assert s.fields, f"{where} declares no fields"
            elif s.kind is not bool:
                assert s.choices or key in FREE_TEXT, f"{where} declares no choices"


def conforms(s: Setting, v: Any) -> bool:
    """``v`` is a value of ``s``'s type inside its range (what an accepted setting must be)."""
    if s.kind is dict:
        return isinstance(v, dict) and all(
            k in s.fields and conforms(s.fields[k], x) for k, x in v.items()
        )
    if s.kind is bool:
        return isinstance(v, bool)
    if s.kind in (int, float):
        if isinstance(v, bool) or not isinstance(v, s.kind) or not math.isfinite(v):
            return False
        above = v > s.low if s.open_low else v >= s.low
        return above and (s.high is None or v <= s.high)
    words = v if isinstance(v, list) else [v]
    return all(isinstance(w, str) for w in words) and (
        not s.choices or set(words) <= set(s.choices)
    )


def near_bounds(s: Setting) -> list:
    """Each bound and its neighbours, as ints and floats, and a choice with another letter case."""
    out = []
    for b in (s.low, s.high):
        if b is not None:
            out += [
                b,
                b - 1,
                b + 1,
                float(b),
                math.nextafter(b, -math.inf),
                math.nextafter(b, math.inf),
            ]
    return out + [c.upper() for c in s.choices] + list(s.choices)


HOSTILE = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.lists(st.sampled_from(["apgd-ce", "square", "", "x"]), max_size=3),
    st.dictionaries(st.sampled_from(["steps", "eps", "eot", "x"]), st.integers(-3, 3), max_size=2),
)


@settings(
    max_examples=fuzz_examples(300),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_a_drawn_setting_is_refused_in_one_line_or_accepted_in_its_range(data):
    metric, key = data.draw(st.sampled_from(SETTINGS))
    s = metric_schema(metric)[key]
    value = data.draw(st.one_of(st.sampled_from(near_bounds(s) or [None]), HOSTILE))
    overrides = {metric: {key: value}}
    try:
        check_request("custom", [metric], None, overrides)
    except BenchError as exc:
        assert "\n" not in str(exc) and f"{metric}.{key}" in str(exc), str(exc)
        return
    assert conforms(s, overrides[metric][key]), (metric, key, value, overrides[metric][key])


@settings(max_examples=fuzz_examples(100), database=None)
@given(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)))
def test_n_examples_is_a_positive_integer_or_one_line(n):
    try:
        check_request("quick", None, n)
    except BenchError as exc:
        assert "\n" not in str(exc) and "n_examples" in str(exc)
    else:  # a whole number >= 1 (1.0 too: the settings hold int(n))
        assert conforms(COMMON_SETTINGS["n_examples"], int(n)) and int(n) == n


def test_every_built_in_protocol_is_in_range_and_a_protocol_out_of_range_is_refused():
    for name in PROTOCOLS.names():
        check_request(name, None if PROTOCOLS.get(name).metrics else ["clean"], 10)
    bad = [
        ({"pgd": {"steps": -3}}, 0.0, "protocol test-range's pgd.steps=-3 is out of range"),
        ({"pgd": {"eps": 1.5}}, 0.0, "pgd.eps=1.5 is out of range"),
        ({"energy": {"attack": {"alpha": 0}}}, 0.0, "energy.attack.alpha=0.0 is out of range"),
        ({"calibration": {"bins": 0}}, 0.0, "calibration.bins=0 is out of range"),
        ({"clean": {"n_examples": 0}}, 0.0, "clean.n_examples=0 is out of range"),
        ({"clean": {}}, -0.1, "protocol test-range's input_noise=-0.1 is out of range"),
        ({"clean": {}}, 1.5, "input_noise=1.5 is out of range"),
    ]
    for metrics_, noise, message in bad:
        register_protocol(
            Protocol("test-range", "x", metrics=metrics_, input_noise=noise), replace=True
        )
        try:
            with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(".", r"\.")):
                check_request("test-range", None, 10)
        finally:
            PROTOCOLS.unregister("test-range")


def _noisy(model, data, settings, ctx):
    return {"sigma": settings.get("sigma", 0.1), "n_examples": settings.get("n_examples", 0)}


@pytest.mark.parametrize(
    "declared, refused, accepted",
    [
        # a plugin declaring ranges, as the built-in metrics do
        (
            {"sigma": Setting(float, 0, 1, unit="pixel units")},
            [
                ({"sigma": 2}, "--set test-plugin.sigma=2.0 is out of range"),
                ({"sigma": "x"}, "expects a number"),
            ],
            [{"sigma": 0.5}],
        ),
        # the README's plugin: names only, its values unchecked; n_examples still is
        (
            ("sigma",),
            [({"n_examples": -3}, "--set test-plugin.n_examples=-3 is out of range")],
            [{"sigma": "anything"}],
        ),
        (None, [({"n_examples": 0}, "n_examples=0 is out of range")], [{"whatever": 3}]),
    ],
)
def test_a_plugin_metric_declares_ranges_the_same_way(declared, refused, accepted):
    register_metric("test-plugin", _noisy, settings=declared, replace=True)
    try:
        for items, message in refused:
            with pytest.raises(BenchError, match=message.replace(".", r"\.")):
                check_request("custom", ["test-plugin"], None, {"test-plugin": dict(items)})
        for items in accepted:
            check_request("custom", ["test-plugin"], None, {"test-plugin": dict(items)})
    finally:
        METRICS.unregister("test-plugin")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))

    def forward(self, x):
        return 8 * self.net(x)


TINY = Tiny().eval().requires_grad_(False)
g = torch.Generator().manual_seed(3)
IMAGES = SimpleNamespace(
    name="syn",
    x_test=torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8, generator=g),
    y_test=torch.randint(0, 10, (12,), generator=g),
    num_classes=10,
)


VALID = {
    "steps": st.integers(1, 3),
    "eps": st.floats(0, 1),
    "alpha": st.floats(1e-3, 1),
    "restarts": st.integers(1, 2),
    "n": st.one_of(st.integers(1, 14), st.just(3.0)),
}
INVALID = {
    "steps": st.integers(-3, 0),
    "eps": st.one_of(st.floats(-1, -1e-9), st.floats(1.0001, 2), st.just(math.nan)),
    "alpha": st.floats(-0.1, 0),
    "restarts": st.integers(-1, 0),
    "n": st.one_of(st.integers(-2, 0), st.just(2.5)),
}


@settings(max_examples=fuzz_examples(50), deadline=None, database=None)
@given(st.data())
def test_pgd_gives_a_true_result_or_none(data):
    """No false result: a setting out of range is refused with no result; settings in range give
    the robust accuracy of the n images asked for (all there are, at most), never above the
    clean accuracy, stored with the settings applied."""
    bad = data.draw(st.sampled_from([None, None, None, *VALID]))
    v = {k: data.draw(INVALID[k] if k == bad else VALID[k], label=k) for k in VALID}
    over = {"pgd": {k: v[k] for k in ("steps", "eps", "alpha", "restarts")}}
    ctx = EvalContext(device=torch.device("cpu"), batch_size=5, seed=0, show_progress=False)
    results: dict = {}
    try:
        evaluate(TINY, IMAGES, "custom", v["n"], ctx, ["pgd"], over, results=results)
    except BenchError as exc:
        assert bad is not None and results == {} and "\n" not in str(exc)
        return
    assert bad is None
    (res,) = results.values()
    assert res["n_examples"] == min(int(v["n"]), 12) and res["settings"]["n_examples"] == int(
        v["n"]
    )
    assert res["accuracy"] <= res["clean_accuracy"]
    assert res["settings"]["steps"] == v["steps"] and res["settings"]["eps"] == v["eps"]


def test_a_result_key_that_is_not_a_plain_name_is_refused_before_the_work():
    """A free-text setting (``fid.weights``) ends up in the stored key ``fid[weights=...]``; a key
    that records refuse on load must be refused before the evaluation runs, not when it is stored."""
    from metrics.engine import check_request

    with pytest.raises(BenchError, match="--set fid.weights .* is not a plain name"):
        check_request("custom", ["fid"], overrides={"fid": {"weights": "/o'brien/w.pth"}})
    assert check_request("custom", ["fid"], overrides={"fid": {"weights": "/data/w.pth"}}) == [
        "fid"
    ]
