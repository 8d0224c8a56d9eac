"""Bad run settings and data are refused before anything is created (issue 26, items 5, 6 and 9):
every numeric setting has a range in the one schema (``bench.core.config.RANGES``), and a
property test draws values for each, in and out of range, NaN, infinities and huge numbers."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np
import pandas as pd
import pytest
from conftest import fuzz_examples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.core.config import RANGES, RunConfig
from bench.core.errors import BenchError
from bench.core.settings import admits, flatten
from bench.run.resolve import resolve_config

NUMBERS = (int, float)


def _numeric_fields(cls: type, prefix: str) -> dict[str, tuple[type, int]]:
    """Every numeric setting of dataclass ``cls`` (nested ones too): path -> (type, how many values:
    0 for one, n for an n-tuple, -1 for a list)."""
    out: dict[str, tuple[type, int]] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, path = hints[f.name], prefix + ("method" if f.name == "method_cfg" else f.name)
        args = get_args(hint)
        if dataclasses.is_dataclass(hint):
            out.update(_numeric_fields(hint, path + "."))
        elif hint in NUMBERS and hint is not bool:
            out[path] = (hint, 0)
        elif get_origin(hint) in (tuple, list) and args and args[0] in NUMBERS:
            out[path] = (args[0], len(args) if get_origin(hint) is tuple else -1)
    return out


def _settings() -> dict[str, tuple[str, type, int]]:
    """Every numeric run setting -> (a built-in method that has it, its type, its arity)."""
    from methods import METHODS, get_method

    out = {path: ("ce", *kind) for path, kind in _numeric_fields(RunConfig, "").items()}
    for name in METHODS.names():
        config = getattr(get_method(name), "Config", None)
        if config is not None and get_method(name).__module__.startswith("methods."):
            for path, kind in _numeric_fields(config, "method.").items():
                out.setdefault(path, (name, *kind))
    return out


SETTINGS = _settings()


def test_every_numeric_setting_has_a_range():
    missing = sorted(set(SETTINGS) - set(RANGES))
    assert not missing, f"no range declared in bench.core.config.RANGES for: {missing}"
    assert not set(RANGES) - set(SETTINGS), "a range for a setting no config has"


def _yaml(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    return repr(value)


def _item(path: str, arity: int, value: Any) -> str:
    text = _yaml(value)
    return f"{path}={text if arity == 0 else '[' + ', '.join([text] * max(arity, 1)) + ']'}"


VALUES = st.one_of(
    st.integers(-(10**25), 10**25),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1.0, 2**31, 2**64, 10**400, 1e308, -1e-300]),
)


@settings(
    max_examples=fuzz_examples(300),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(path=st.sampled_from(sorted(SETTINGS)), value=VALUES)
@example(path="optim.momentum", value=-1)
@example(path="model.std", value=0)
@example(path="data.train_subset", value=-5)
@example(path="train.max_steps", value=-1)
@example(path="train.keep_checkpoints", value=0)
@example(path="train.checkpoint_every", value=0)
@example(path="seed", value=99999999999999999999)
@example(path="method.sampler.buffer_size", value=100_000_000)
def test_a_value_is_taken_or_refused_in_one_line(path, value):
    """Any value: resolved to a config, or refused by one line (a BenchError) and nothing else; a
    value outside the declared range is always refused."""
    method, kind, arity = SETTINGS[path]
    try:
        cfg = resolve_config(method, preset="smoke", overrides=[_item(path, arity, value)])
    except BenchError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    taken = flatten(cfg.to_dict())[path]
    values = taken if isinstance(taken, (list, tuple)) else [taken]
    assert all(admits(RANGES[path], v) for v in values), f"{path}={taken} accepted"
    assert not (kind is int and isinstance(value, float) and not value.is_integer())


@pytest.mark.parametrize(
    "item, message",
    [
        ("optim.momentum=-1", "optim.momentum must lie in [0, 1), got -1.0"),
        ("model.std=[0, 0, 0]", "model.std must be positive"),
        ("data.train_subset=-5", "data.train_subset must be >= 0"),
        ("train.max_steps=-1", "train.max_steps must be >= 0"),
        ("train.keep_checkpoints=0", "train.keep_checkpoints must be positive, got 0"),
        ("train.checkpoint_every=0", "train.checkpoint_every must be positive, got 0"),
        ("seed=9999999999", "seed must lie in [0, 4294967295], got 9999999999"),
        ("seed=99999999999999999999", "seed expects a 64-bit integer"),
        ("optim.lr=" + "9" * 400, "optim.lr expects a finite number"),
    ],
)
def test_the_issue_s_settings_are_refused(item, message):
    with pytest.raises(BenchError) as exc:
        resolve_config("ce", preset="smoke", overrides=[item])
    assert message in str(exc.value) and "\n" not in str(exc.value)


@dataclasses.dataclass
class _PluginConfig:
    steps: int = 0  # a plugin's own meaning: the built-in methods' rule (>= 1) is not its


def test_a_plugin_method_checks_its_own_settings():
    from methods import METHODS, Method, register_method

    register_method("test-own-steps")(type("OwnSteps", (Method,), {"Config": _PluginConfig}))
    try:
        assert resolve_config("test-own-steps", preset="smoke").method_cfg == {"steps": 0}
        with pytest.raises(BenchError, match="optim.momentum must lie in"):
            resolve_config("test-own-steps", preset="smoke", overrides=["optim.momentum=2"])
    finally:
        METHODS.unregister("test-own-steps")


def test_a_replay_buffer_beyond_memory_is_refused_with_its_size():
    with pytest.raises(BenchError) as exc:
        resolve_config("jem++", preset="smoke", overrides=["method.sampler.buffer_size=100000000"])
    assert "method.sampler.buffer_size=100000000 holds 1228.8 GB" in str(exc.value)


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "optim.momentum=-1", "--dry-run"],
        ["--seed", "99999999999999999999"],
        ["--set", "model.std=[0,0,0]"],
    ],
)
def test_bench_run_refuses_in_one_line_and_creates_nothing(bench_subprocess, tmp_path, args):
    """The CLI end to end (a fresh process): one line on stderr, no traceback, nothing written."""
    res = bench_subprocess("run", "--method", "ce", "--preset", "smoke", *args, cwd=tmp_path)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr and not any(tmp_path.iterdir())


# -- data --------------------------------------------------------------------------------------
def _npz_with_bad_test_labels(path) -> str:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    y_test = np.array([0, 1] * 4 + [12])
    np.savez(path, x=x, y=np.arange(40) % 2, x_test=x[:9], y_test=y_test)
    return f"npz:{path}"


def test_labels_outside_the_classes_are_refused_before_a_run_exists(bench_cli, tmp_path):
    from bench.core.config import DataConfig
    from bench.data import load_dataset

    dataset = _npz_with_bad_test_labels(tmp_path / "bad.npz")
    with pytest.raises(BenchError, match=r"test labels must lie in \[0, 1\] .*got 12"):
        load_dataset(DataConfig(dataset=dataset))
    out = tmp_path / "results"
    res = bench_cli("run", "--method", "ce", "--preset", "smoke", "-d", dataset, "--out", out, "-q")
    assert res.exit_code == 2 and "test labels must lie in [0, 1]" in res.stderr
    assert not out.exists()
    dry = bench_cli("run", "--method", "ce", "--preset", "smoke", "-d", dataset, "--dry-run")
    assert "plan: steps unknown: dataset npz:bad.npz: test labels must lie in" in dry.stdout


def test_a_failure_while_building_the_trainer_is_recorded_as_failed(
    monkeypatch, tmp_path, tiny_overrides
):
    from bench.core.records import RunRecord
    from bench.core.run_dirs import list_runs, live_status
    from bench.run import train_and_evaluate
    from bench.run.resolve import resolve
    from bench.run.runner import start_run

    def refuse(*args, **kwargs):
        raise ValueError("Invalid momentum value: -1.0")

    monkeypatch.setattr(train_and_evaluate, "Trainer", refuse)
    out = tmp_path / "results"
    with pytest.raises(ValueError):
        start_run(resolve("ce", "smoke", overrides=tiny_overrides), out=out, show_progress=False)
    (run_dir,) = list_runs(out)
    record = RunRecord.load(run_dir)
    assert live_status(run_dir, record.data) == "failed"
    assert record["message"] == "ValueError: Invalid momentum value: -1.0"


# -- compare -----------------------------------------------------------------------------------
@pytest.mark.parametrize("given", ["method=", "method!=", "seed>", "method= "])
def test_a_filter_without_a_value_is_refused(given):
    from bench.leaderboard.filters import apply_filters

    table = pd.DataFrame({"run_id": ["a", "b"], "method": ["ce", "pgd-at"], "seed": [0, 1]})
    with pytest.raises(BenchError, match="gives no value after"):
        apply_filters(table, [given])
