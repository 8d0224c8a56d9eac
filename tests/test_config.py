"""Config resolution order, --set parsing, type checks, method settings, config in the record."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import yaml

from bench.core.config import RunConfig, from_dict, parse_set
from bench.core.errors import BenchError
from bench.run import layers as layers_mod
from bench.run.resolve import resolve_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


# -- resolution order ------------------------------------------------------------------------
@dataclass
class _LayerCfg:
    knob: int = 1
    other: str = "default"


@pytest.fixture
def layered(tmp_path, monkeypatch):
    """A method, a preset dir and a config file that each set a different subset of keys.

    Key k is set by the first k layers only, so its resolved value names the last layer that won.
    """
    from methods import METHODS, Method, register_method

    @register_method("test-layers")
    class Layers(Method):
        Config = _LayerCfg
        run_defaults = {
            "optim": {"gamma": 0.2, "momentum": 0.2, "weight_decay": 0.2, "grad_clip": 0.2},
            "train": {"rollback_lr_factor": 0.2},
            "data": {"noise_std": 0.2},
            "method": {"knob": 2},
        }
        presets = {
            "lay": {
                "optim": {"gamma": 0.4, "momentum": 0.4, "weight_decay": 0.4},
                "method": {"knob": 4},
            }
        }

    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "lay.yaml").write_text(
        yaml.safe_dump(
            {
                "description": "test preset",
                "config": {
                    "optim": {"gamma": 0.3, "momentum": 0.3, "weight_decay": 0.3, "grad_clip": 0.3},
                    "train": {"rollback_lr_factor": 0.3},
                    "method": {"knob": 3},
                },
            }
        )
    )
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        yaml.safe_dump({"optim": {"gamma": 0.5, "momentum": 0.5}, "method": {"knob": 5}})
    )
    monkeypatch.setattr(layers_mod, "PRESET_DIR", presets)
    yield cfg_file
    METHODS.unregister("test-layers")


def test_resolution_order(layered):
    cfg = resolve_config(
        "test-layers",
        preset="lay",
        config_file=str(layered),
        overrides=["optim.gamma=0.6", "method.knob=6"],
    )
    assert cfg.optim.gamma == 0.6  # --set
    assert cfg.optim.momentum == 0.5  # --config file
    assert cfg.optim.weight_decay == 0.4  # the method's presets, section <preset>
    assert cfg.optim.grad_clip == 0.3 and cfg.train.rollback_lr_factor == 0.3  # preset's config:
    assert cfg.data.noise_std == 0.2  # method run_defaults
    assert cfg.model.dropout == 0.0 and cfg.optim.lr == 0.1  # dataclass defaults
    assert cfg.method_cfg == {"knob": 6, "other": "default"}
    assert cfg.preset == "lay" and cfg.method == "test-layers"


def test_a_preset_with_an_unknown_section_is_refused(layered):
    """The per-preset ``methods:`` layer is gone: per-method settings live in the method's presets."""
    path = layers_mod.PRESET_DIR / "lay.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(
        yaml.safe_dump({**data, "methods": {"test-layers": {"optim": {"gamma": 0.35}}}})
    )
    with pytest.raises(
        BenchError, match=r"lay.yaml.*methods.*presets of method test-layers"
    ) as exc:
        resolve_config("test-layers", preset="lay")
    assert "\n" not in str(exc.value)


def test_each_layer_wins_over_the_one_below(layered):
    assert (
        resolve_config("test-layers", preset="lay", config_file=str(layered)).method_cfg["knob"]
        == 5
    )
    cfg = resolve_config("test-layers", preset="lay")
    assert (cfg.optim.gamma, cfg.optim.momentum, cfg.method_cfg["knob"]) == (0.4, 0.4, 4)


def test_real_presets_and_method_preset_files():
    smoke = yaml.safe_load((layers_mod.PRESET_DIR / "smoke.yaml").read_text())["config"]
    cfg = resolve_config("ce", preset="smoke")
    assert cfg.data.train_subset == smoke["data"]["train_subset"]
    assert cfg.train.epochs == smoke["train"]["epochs"]
    assert cfg.optim.schedule == "cosine"  # ce's run_defaults survive the preset
    pgd_smoke = yaml.safe_load((ROOT / "methods" / "pgd_at.yaml").read_text())["pgd-at"]["presets"][
        "smoke"
    ]
    cfg = resolve_config("pgd-at", preset="smoke")
    assert cfg.method_cfg["steps"] == pgd_smoke["method"]["steps"]
    assert cfg.optim.schedule == "step"  # pgd-at's reference schedule
    cfg = resolve_config(
        "pgd-at", preset="smoke", overrides=["method.steps=7", "method.alpha=0.01"]
    )
    assert cfg.method_cfg["steps"] == 7 and cfg.method_cfg["alpha"] == 0.01
    assert cfg.method_cfg["eps"] == pytest.approx(8 / 255)


def test_a_run_is_resolved_once_from_preset_files_read_once():
    from bench.run.resolve import resolve

    layers_mod._read_yaml.cache_clear()
    runs = [resolve("pgd-at", preset="demo", overrides=["optim.lr=0.02"]) for _ in range(3)]
    assert layers_mod._read_yaml.cache_info().misses == 1  # demo.yaml, once
    run = runs[0]
    assert run.changes == {"optim.lr": 0.02} and run.preset_variant["method.steps"] == 3
    assert run.sources["optim.lr"] == "--set/flags" and run.sources["method.steps"] == (
        "preset demo of pgd-at"
    )


def test_named_options_override_everything():
    cfg = resolve_config(
        "ce",
        preset="smoke",
        dataset="npz:/x.npz",
        arch="resnet8-wide",
        seed=3,
        device="cpu",
        overrides=["seed=9", "model.arch=wrn-16-2"],
    )
    # --dataset/--arch/--seed are applied with the --set overrides; the named flag wins
    assert (cfg.data.dataset, cfg.model.arch, cfg.seed, cfg.device) == (
        "npz:/x.npz",
        "resnet8-wide",
        3,
        "cpu",
    )


# -- --set parsing -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "item, expected",
    [
        ("optim.lr=0.01", {"optim": {"lr": 0.01}}),
        ("optim.milestones=[0.3, 0.6]", {"optim": {"milestones": [0.3, 0.6]}}),
        ("data.augment=false", {"data": {"augment": False}}),
        ("model.arch=wrn-28-10", {"model": {"arch": "wrn-28-10"}}),
        ("seed=4", {"seed": 4}),
        ("method.steps=7", {"method_cfg": {"steps": 7}}),
        (" train.max_steps = 5", {"train": {"max_steps": 5}}),
        ("data.dataset=npz:/a=b.npz", {"data": {"dataset": "npz:/a=b.npz"}}),
    ],
)
def test_parse_set(item, expected):
    assert parse_set(item) == expected


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=1", ".lr=1", "optim.lr=[1, 2"])
def test_parse_set_rejects_malformed(item):
    with pytest.raises(BenchError, match="malformed"):
        parse_set(item)


def test_scientific_notation_is_a_number():
    """YAML 1.1 reads ``1e-4`` as a string; a learning rate written that way must still work."""
    cfg = resolve_config(
        "ce", preset="smoke", overrides=["optim.lr=1e-4", "optim.weight_decay=5E-4"]
    )
    assert cfg.optim.lr == 1e-4 and cfg.optim.weight_decay == 5e-4


@pytest.mark.parametrize(
    "item, match",
    [
        ("optim.lr=abc", "optim.lr expects a number, got 'abc'"),
        ("optim.lr=nan", "optim.lr expects a number"),
        ("optim.lr=true", "optim.lr expects a number"),
        ("train.max_steps=1.5", "train.max_steps expects an integer"),
        ("data.augment=maybe", "data.augment expects true/false"),
        ("data.augment=1", "data.augment expects true/false"),
        ("optim.milestones=0.5", "optim.milestones expects a list"),
        ("model.mean=[0.5, 0.5]", "model.mean expects 3 values"),
        ("optim.milestones=[0.5, x]", "optim.milestones expects a number"),
        ("optim=3", "optim is a section"),
        ("optim.lrr=0.1", "unknown setting 'optim.lrr'; valid keys here: .*lr"),
        ("bogus.x=1", "unknown setting 'bogus'"),
        (
            "optim.schedule=linear",
            "optim.schedule='linear' is not valid; choose one of: constant, cosine, step",
        ),
        ("optim.lr=-1", "optim.lr must be positive"),
        ("data.batch_size=0", "data.batch_size must be positive"),
        ("data.noise_std=1.5", "data.noise_std is in pixel units"),
        ("method.bogus=1", "unknown setting 'bogus'"),
        ("eval.protocol=bogus", "unknown protocol 'bogus'; choose one of: .*quick"),
        ("method.steps=0", "method.steps must be >= 1"),
        ("method.attack_mode=sideways", "attack_mode='sideways' is not valid"),
    ],
)
def test_type_and_value_errors(item, match):
    with pytest.raises(BenchError, match=match) as exc:
        resolve_config("pgd-at", preset="smoke", overrides=[item])
    assert "\n" not in str(exc.value)


def test_method_without_settings_rejects_method_keys():
    with pytest.raises(BenchError, match="method 'ce' takes no method.\\* settings"):
        resolve_config("ce", preset="smoke", overrides=["method.steps=3"])


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(BenchError, match="unknown preset 'fast'; choose one of: .*smoke"):
        resolve_config("ce", preset="fast")


# -- config files --------------------------------------------------------------------------------
def test_config_file_yaml_and_json(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  lr: 2e-3\nmethod:\n  steps: 4\ntrain: {max_steps: 9}\n")
    cfg = resolve_config("pgd-at", preset="smoke", config_file=str(y))
    assert (cfg.optim.lr, cfg.method_cfg["steps"], cfg.train.max_steps) == (2e-3, 4, 9)
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"data": {"batch_size": 16}, "seed": 5}))
    cfg = resolve_config("ce", preset="smoke", config_file=str(j))
    assert (cfg.data.batch_size, cfg.seed) == (16, 5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("- a\n- b\n", "must hold a mapping"),
        ("optim: {lr: [\n", "not valid YAML"),
        ("optim: {lr: fast}\n", "optim.lr expects a number"),
    ],
)
def test_bad_config_files(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(BenchError, match=match):
        resolve_config("ce", preset="smoke", config_file=str(f))
    with pytest.raises(BenchError, match="not found"):
        resolve_config("ce", preset="smoke", config_file=str(tmp_path / "missing.yaml"))


# -- the record -------------------------------------------------------------------------------------
def test_resolved_config_is_in_the_record_and_round_trips(complete_run, tiny_overrides):
    rec = json.loads((complete_run / "record.json").read_text())
    cfg = resolve_config("ce", preset="smoke", seed=0, overrides=tiny_overrides)
    assert rec["config"] == json.loads(json.dumps(cfg.to_dict()))
    again = from_dict(RunConfig, rec["config"])
    assert again == cfg and again.digest() == rec["config_digest"] == cfg.digest()
    # the digest changes with anything that changes the numbers, but not with the device
    assert (
        resolve_config("ce", preset="smoke", seed=1, overrides=tiny_overrides).digest()
        != cfg.digest()
    )
    assert (
        resolve_config(
            "ce", preset="smoke", seed=0, device="cpu", overrides=tiny_overrides
        ).digest()
        == cfg.digest()
    )


def test_method_settings_reach_the_method_object():
    import torch

    from bench.data import ImageData
    from bench.run.runner import _build

    cfg = resolve_config(
        "pgd-at", preset="smoke", overrides=["method.steps=2", "method.attack_mode=eval"]
    )
    cfg = from_dict(RunConfig, json.loads(json.dumps(cfg.to_dict())))  # as resumed from a record
    data = ImageData(
        "t",
        torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(4, dtype=torch.long),
        torch.zeros(4, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(4, dtype=torch.long),
        list("abcdefghij"),
    )
    _, method = _build(cfg, data, torch.device("cpu"))
    assert method.cfg.steps == 2 and method.cfg.attack_mode == "eval"
    assert method.cfg.alpha == cfg.method_cfg["alpha"]


def test_method_and_preset_are_chosen_by_their_options_only(tmp_path):
    """A config file or --set naming another method/preset would relabel the run without
    switching the method's code or the preset's settings: refused with the option to use."""
    f = tmp_path / "m.yaml"
    f.write_text("method: pgd-at\noptim: {lr: 0.05}\n")
    with pytest.raises(
        BenchError,
        match="method 'pgd-at' set in a config file or --set differs from --method ce; "
        "choose it with --method pgd-at",
    ):
        resolve_config("ce", preset="smoke", config_file=str(f))
    with pytest.raises(BenchError, match="choose it with --preset paper"):
        resolve_config("ce", preset="smoke", overrides=["preset=paper"])
    f.write_text("method: ce\npreset: smoke\noptim: {lr: 0.05}\n")  # restating them is fine
    assert resolve_config("ce", preset="smoke", config_file=str(f)).optim.lr == 0.05


def test_every_built_in_method_with_costly_steps_has_a_variant_for_every_cpu_preset():
    """A method whose step costs more than ce's (an attack, a sampler) shortens it for smoke, demo and
    cpu in its own presets file, so no preset silently runs the reference's PGD-10 or SGLD-20 on a CPU."""
    from methods import METHODS, get_method

    built_in = [m for m in METHODS.names() if get_method(m).__module__.startswith("methods.")]
    assert {"pgd-at", "trades", "mart", "jem", "jem++", "sada-jem", "ebjdat"} <= set(built_in)
    for method in built_in:
        sections = get_method(method).presets  # an -awp variant: its base method's
        if method == "ce":
            assert sections == {}
            continue
        assert {"smoke", "demo", "cpu"} <= set(sections), f"{method}: {sorted(sections)}"
        for preset in ("smoke", "demo", "cpu"):
            cfg = resolve_config(method, preset=preset)
            own = sections[preset].get("method") or {}
            for key in ("steps", "attack_steps"):
                if key in own:
                    assert cfg.method_cfg[key] == own[key] < 10, (method, preset, key)
