"""Registries: decorator registration, entry-point plugins, unknown names, parametric names."""

from __future__ import annotations

import textwrap

import pytest
from conftest import only_run

from bench.core.errors import BenchError
from bench.core.registry import Registry


def test_decorator_registration_and_lookup():
    reg = Registry("widget")

    @reg.register("alpha")
    def alpha():
        return "a"

    reg.register("beta", obj=len)
    assert reg.get("alpha") is alpha
    assert reg.get("beta") is len
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", obj=len)
    reg.register("alpha", obj=len, replace=True)
    assert reg.get("alpha") is len


def test_unknown_name_lists_the_valid_ones():
    reg = Registry("widget")
    reg.register("alpha", obj=1)
    reg.register("beta", obj=2)
    with pytest.raises(BenchError) as exc:
        reg.get("gamma")
    msg = str(exc.value)
    assert "unknown widget 'gamma'" in msg and "alpha, beta" in msg
    assert "\n" not in msg


def test_builtin_registries_know_the_foundation():
    from bench.data import DATASETS
    from bench.models import ARCHS
    from methods import METHODS
    from metrics import METRICS

    assert {"ce", "pgd-at"} <= set(METHODS.names())
    assert {"shapes10", "cifar10", "cifar100", "npz:PATH"} <= set(DATASETS.names())
    assert {"resnet8", "wrn-D-W"} <= set(ARCHS.names())
    assert {"clean", "pgd"} <= set(METRICS.names())
    for reg, bad in ((METHODS, "cee"), (DATASETS, "cifar11"), (ARCHS, "resnet9")):
        with pytest.raises(BenchError, match="choose one of"):
            reg.get(bad)


def test_pattern_names_bind_their_parameters(tmp_path, monkeypatch):
    import numpy as np

    from bench.core.config import DataConfig
    from bench.data import DATASETS
    from bench.models import ARCHS

    model = ARCHS.get("wrn-10-1")(num_classes=7)
    assert type(model).__name__ == "WideResNet"
    assert model.head.out_features == 7 and model.head.in_features == 64  # width 1: 64 channels
    assert len(model.stages[0]) == 1  # depth 10 -> one block per stage
    assert "wrn-10-1" in ARCHS and "wrn-x-1" not in ARCHS and "wrn-10-1-extra" not in ARCHS

    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    data = DATASETS.get(f"npz:{path}")(cfg=DataConfig(dataset=f"npz:{path}"))
    assert data.x_train.shape[0] + data.x_test.shape[0] == 10
    assert data.source == str(path.resolve())

    # the path is passed through as text, even when it looks like a number
    monkeypatch.chdir(tmp_path)
    (tmp_path / "007").write_bytes(path.read_bytes())
    data = DATASETS.get("npz:007")(cfg=DataConfig(dataset="npz:007"))
    assert data.source == str((tmp_path / "007").resolve())


def test_method_decorator_registers_and_is_listed(bench_cli):
    from methods import METHODS, Method, register_method

    @register_method("test-decorated")
    class Decorated(Method):
        reference = "a test method"

        def training_step(self, model, x, y, ctx):  # pragma: no cover - not run
            raise AssertionError

    try:
        assert METHODS.get("test-decorated") is Decorated and Decorated.name == "test-decorated"
        res = bench_cli("list", "methods")
        assert res.exit_code == 0
        assert any(
            line.split()[0] == "test-decorated" and "a test method" in line
            for line in res.stdout.splitlines()
        )
    finally:
        METHODS.unregister("test-decorated")
    assert "test-decorated" not in METHODS


PLUGIN = '''
"""A third-party method living outside trilemma-bench."""
from dataclasses import dataclass

import torch.nn.functional as F

from methods import Method


@dataclass
class Cfg:
    smoothing: float = 0.0


class SmoothCE(Method):
    Config = Cfg
    reference = "third-party label smoothing"

    def training_step(self, model, x, y, ctx):
        with ctx.autocast():
            logits = model(x)
        return {"ce_ls": F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.smoothing)}

    def loss_weights(self):
        return {"ce_ls": 1.0}
'''


def _install_plugin(tmp_path, ep_line="smooth-ce = tb_plugin_pkg:SmoothCE"):
    site = tmp_path / "site"
    site.mkdir()
    (site / "tb_plugin_pkg.py").write_text(PLUGIN)
    dist = site / "tb_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tb-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
        [trilemma_bench.methods]
        {ep_line}
        broken-plugin = tb_plugin_missing_module:Nothing
        """)
    )
    return site


@pytest.mark.slow
def test_entry_point_plugin_runs_through_bench_run(
    tmp_path, bench_subprocess, bench_cli, tiny_args, shapes_data_dir
):
    site = _install_plugin(tmp_path)
    env = {"PYTHONPATH": str(site)}
    listed = bench_subprocess("list", "methods", env=env)
    assert listed.exit_code == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert "smooth-ce" in names and "ce" in names
    # a broken plugin is reported, not fatal
    assert any(
        "broken-plugin" in line and "failed to load" in line for line in listed.stdout.splitlines()
    )

    out = tmp_path / "results"
    res = bench_subprocess(
        "run",
        "--method",
        "smooth-ce",
        *tiny_args(out, shapes_data_dir, steps=2),
        "--set",
        "method.smoothing=0.1",
        "--set",
        "eval.enabled=false",
        env=env,
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(out)
    assert rec["status"] == "complete" and rec["method"] == "smooth-ce"
    assert rec["config"]["method_cfg"] == {"smoothing": 0.1}
    assert rec["training"]["steps_done"] == 2
    assert all("ce_ls" in h for h in rec["training"]["history"])

    # the plugin is not installed in this process: the name is unknown and the valid ones are listed
    res = bench_cli("run", "--method", "smooth-ce", *tiny_args(out, shapes_data_dir, steps=2))
    assert res.exit_code == 2 and res.stderr.startswith(
        "error: unknown method 'smooth-ce'; choose one of:"
    )
    assert {"ce", "pgd-at"} <= set(res.error_lines[0].split(": ")[-1].split(", "))


def test_entry_points_are_read_in_process(monkeypatch, tmp_path):
    """Registry._load reads the group through importlib.metadata (checked with a real dist-info)."""
    import importlib
    import sys

    site = _install_plugin(tmp_path, ep_line="smooth-ce-2 = tb_plugin_pkg:SmoothCE")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    reg = Registry("method", group="trilemma_bench.methods")
    assert "smooth-ce-2" in reg.names()
    assert reg.get("smooth-ce-2").__name__ == "SmoothCE"
    assert (
        "broken-plugin" in reg.load_errors
        and "ModuleNotFoundError" in reg.load_errors["broken-plugin"]
    )
    with pytest.raises(BenchError, match="failed to load"):
        reg.get("broken-plugin")
    sys.modules.pop("tb_plugin_pkg", None)


def test_a_sampler_entry_point_naming_a_bare_function_is_a_load_error(monkeypatch, tmp_path):
    """A sampler entry point whose name differs from the one its decorator registered would give the
    bare function (no .run): it is refused at load time with the fix, not an AttributeError mid-run."""
    import importlib
    import sys

    site = tmp_path / "site"
    pkg = site / "tb_sampler_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""\
        from bench.sampling import register_sampler

        @register_sampler("registered-name")
        def run(cfg, model, xs, y, steps, mode, trace):
            return xs
    """)
    )
    dist = site / "tb_sampler_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tb-sampler-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[trilemma_bench.samplers]\nother-name = tb_sampler_pkg:run\n"
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    from bench.sampling.kinds import SAMPLERS, SamplerKind

    reg = Registry(
        "sampler",
        group="trilemma_bench.samplers",
        accepts=SAMPLERS.accepts,
        expected=SAMPLERS.expected,
    )
    try:
        assert "other-name" not in reg.names()
        assert "not a sampler kind" in reg.load_errors["other-name"]
        with pytest.raises(BenchError, match="@register_sampler"):
            reg.get("other-name")
        assert isinstance(
            SAMPLERS.get("registered-name"), SamplerKind
        )  # importing registered the real one
    finally:
        SAMPLERS.unregister("registered-name")
        sys.modules.pop("tb_sampler_pkg", None)


def test_a_plugin_method_ships_its_own_preset_variants():
    from dataclasses import dataclass

    from bench.run.resolve import resolve, resolve_config
    from methods import METHODS, Method, register_method

    @dataclass
    class Cfg:
        steps: int = 10

    @register_method("test-with-presets")
    class WithPresets(Method):
        Config = Cfg
        presets = {
            "smoke": {"method": {"steps": 2}, "train": {"log_every": 1}},
            "demo": {"method": {"steps": 3}},
        }

        def training_step(self, model, x, y, ctx):  # pragma: no cover - not run
            raise AssertionError

    try:
        smoke = resolve_config("test-with-presets", preset="smoke")
        assert smoke.method_cfg["steps"] == 2 and smoke.train.log_every == 1
        assert resolve_config("test-with-presets", preset="demo").method_cfg["steps"] == 3
        assert (
            resolve_config("test-with-presets", preset="cpu").method_cfg["steps"] == 10
        )  # no variant: the default
        assert resolve("test-with-presets", preset="smoke").changes == {}  # the preset's own value
        tuned = resolve("test-with-presets", preset="smoke", overrides=["method.steps=5"])
        assert tuned.changes == {"method.steps": 5}
        WithPresets.presets = {"tiny": {"method": {"steps": 1}}}
        with pytest.raises(BenchError, match="unknown presets tiny"):
            resolve_config("test-with-presets", preset="smoke")
    finally:
        METHODS.unregister("test-with-presets")


def test_a_protocol_named_by_an_entry_point_is_credited_to_its_package(monkeypatch, tmp_path):
    """A plugin's protocol object (not passed through register_protocol) gets its provider from the entry
    point's module, so a run's record lists it; the built-in protocols have none."""
    import importlib
    import sys

    from metrics.protocols import PROTOCOLS, protocol_provider

    site = tmp_path / "site"
    site.mkdir()
    (site / "tb_protocol_pkg.py").write_text(
        textwrap.dedent("""\
        from metrics import Protocol

        PGD7 = Protocol(name="pgd-7-ep", description="PGD-7", metrics={"clean": {}, "pgd": {"steps": 7}})
    """)
    )
    dist = site / "tb_protocol_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tb-protocol-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[trilemma_bench.protocols]\npgd-7-ep = tb_protocol_pkg:PGD7\n"
    )
    (dist / "RECORD").write_text("tb_protocol_pkg.py,,\n")  # maps the module to its package
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        PROTOCOLS.reload_entry_points()
        assert PROTOCOLS.get("pgd-7-ep").module == ""  # constructed, never registered by its module
        assert protocol_provider("pgd-7-ep") == {
            "package": "tb-protocol-pkg",
            "version": "0.1",
            "module": "tb_protocol_pkg",
        }
        assert protocol_provider("standard") is None and protocol_provider("quick") is None
    finally:
        PROTOCOLS.unregister("pgd-7-ep")
        sys.modules.pop("tb_protocol_pkg", None)
