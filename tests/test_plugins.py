# ruff: noqa: E501 (the plugin sources below are written as a user would write them)
"""Third-party metrics, protocols and samplers: installed as real entry-point packages, they reach
`bench eval`, `bench show` and `bench compare` (metrics), evaluation (protocols) and training
(samplers) with no change to the project."""

from __future__ import annotations

import importlib
import json
import shutil
import sys

import pytest
import torch

from bench.core.registry import Registry

METRIC_PLUGIN = '''
"""A third-party metric: accuracy under Gaussian noise."""
import torch

from metrics.base import Headline, batches, register_metric, test_subset


@register_metric("noise-acc", order=25, headlines=(Headline("accuracy", "noise", scale=100.0, unit="%", decimals=2),),
                 summary=lambda r: f"noisy accuracy {100 * r['accuracy']:.1f}% at sigma {r['sigma']}  n={r['n_examples']}")
@torch.no_grad()
def noise_acc(model, data, settings, ctx):
    sigma = float(settings.get("sigma", 0.1))
    x, y = test_subset(data, settings.get("n_examples", 0))
    g = torch.Generator().manual_seed(ctx.seed)
    correct = 0
    for xb, yb in batches(x, y, ctx.batch_size, ctx.device):
        noisy = (xb + sigma * torch.randn(xb.shape, generator=g).to(xb.device)).clamp(0, 1)
        correct += int((model(noisy).argmax(1) == yb).sum())
    return {"accuracy": correct / x.shape[0], "sigma": sigma, "n_examples": int(x.shape[0])}
'''

PROTOCOL_AND_SAMPLER_PLUGIN = '''
"""A third-party protocol and sampler kind."""
from bench.sampling.kinds import register_sampler
from metrics.protocols import Protocol

FAST = Protocol(name="fast-check", description="clean accuracy on the first 16 test images",
                metrics={"clean": {"n_examples": 16}})

CALLS = []


@register_sampler("plain-descent", step_fields=("step_size",))
def plain_descent(cfg, model, xs, y, steps, mode, trace):
    """Noise-free gradient descent on E(x) with a fixed step."""
    import torch
    from bench.models.base import energy_from_logits
    from bench.sampling.langevin import from_sym, model_mode

    CALLS.append(steps)
    with model_mode(model, mode):
        for _ in range(steps):
            xs = xs.detach().requires_grad_(True)
            e = energy_from_logits(model(from_sym(xs))).sum()
            (g,) = torch.autograd.grad(e, xs)
            xs = (xs - cfg.step_size * g).clamp(-1, 1)
    return xs.detach()
'''


def _install(tmp_path, name: str, module_text: str, groups: dict[str, list[str]]):
    site = tmp_path / f"site-{name}"
    site.mkdir()
    (site / f"{name}.py").write_text(module_text)
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "\n".join(lines) + "\n" for g, lines in groups.items())
    )
    (dist / "RECORD").write_text(
        f"{name}.py,,\n{name}-0.1.dist-info/METADATA,,\n"
    )  # maps the module to its package
    return site


@pytest.mark.slow
def test_a_metric_plugin_reaches_eval_show_and_compare(tmp_path, complete_run, bench_subprocess):
    site = _install(
        tmp_path,
        "tb_metric_pkg",
        METRIC_PLUGIN,
        {"trilemma_bench.metrics": ["noise-acc = tb_metric_pkg:noise_acc"]},
    )
    env = {"PYTHONPATH": str(site)}
    results = tmp_path / "results"
    shutil.copytree(complete_run, results / "runs" / complete_run.name)

    listed = bench_subprocess("list", "metrics", env=env)
    assert listed.exit_code == 0 and "noise-acc" in listed.stdout.split()

    res = bench_subprocess(
        "eval",
        complete_run.name,
        "--out",
        str(results),
        "--protocol",
        "custom",
        "--metrics",
        "pgd,noise-acc",
        "--set",
        "noise-acc.sigma=0.2",
        "-n",
        "32",
        "-q",
        env=env,
    )
    assert res.exit_code == 0, res.stderr
    assert (
        "noisy accuracy" in res.stdout and "at sigma 0.2" in res.stdout
    )  # the plugin's own summary

    # the record names the package that produced the number, as it names torch
    rec = json.loads((results / "runs" / complete_run.name / "record.json").read_text())
    plugin = {
        "kind": "metric",
        "name": "noise-acc",
        "package": "tb-metric-pkg",
        "version": "0.1",
        "module": "tb_metric_pkg",
    }
    assert plugin in rec["environment"]["plugins"]
    assert rec["evaluations"]["custom"]["noise-acc[sigma=0.2]"]["provider"] == {
        k: plugin[k] for k in ("package", "version", "module")
    }

    shown = bench_subprocess("show", complete_run.name, "--out", str(results), env=env)
    assert shown.exit_code == 0 and "noise-acc" in shown.stdout and "at sigma 0.2" in shown.stdout

    table = bench_subprocess("compare", "--out", str(results), "--format", "csv", env=env)
    assert table.exit_code == 0, table.stderr
    header = table.stdout.splitlines()[0].split(",")
    # its column, placed by the plugin's order between pgd (20) and anything later, with its n
    col = "custom/noise[sigma=0.2]"  # an ad-hoc metric under the custom protocol, its changed setting named
    assert col in header and f"{col} n" in header
    assert header.index("custom/pgd") < header.index(col)
    row = table.stdout.splitlines()[1].split(",")
    value = float(row[header.index(col)])
    assert 0.0 <= value <= 100.0 and value == round(value, 2)  # shown in percent, as declared

    # without the plugin installed its stored result still shows, with the default presentation
    plain = bench_subprocess("compare", "--out", str(results), "--format", "csv")
    assert plain.exit_code == 0 and "custom/noise-acc[sigma=0.2]" in plain.stdout.splitlines()[
        0
    ].split(",")


def test_protocol_and_sampler_plugins_register_through_entry_points(
    tmp_path, monkeypatch, shapes_data_dir
):
    site = _install(
        tmp_path,
        "tb_proto_pkg",
        PROTOCOL_AND_SAMPLER_PLUGIN,
        {
            "trilemma_bench.protocols": ["fast-check = tb_proto_pkg:FAST"],
            "trilemma_bench.samplers": [
                "plain-descent = tb_proto_pkg"
            ],  # a module whose import registers
        },
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    from bench.sampling.kinds import SAMPLERS
    from metrics.protocols import PROTOCOLS

    try:
        PROTOCOLS.reload_entry_points()
        SAMPLERS.reload_entry_points()
        assert PROTOCOLS.get("fast-check").metrics == {"clean": {"n_examples": 16}}
        assert "plain-descent" in SAMPLERS.names()

        # the protocol evaluates; the sampler kind draws through the shared sampler code
        from bench.core.config import DataConfig
        from bench.data import load_dataset
        from bench.models import ARCHS
        from bench.sampling.sampler import ContrastiveSampler, SamplerConfig
        from metrics import EvalContext, evaluate

        data = load_dataset(DataConfig(dataset="shapes10", data_dir=str(shapes_data_dir)))
        model = ARCHS.get("resnet8")(num_classes=10).eval()
        out = evaluate(
            model,
            data,
            "fast-check",
            None,
            EvalContext(device=torch.device("cpu"), show_progress=False),
        )
        assert out["clean"]["protocol"] == "fast-check" and out["clean"]["n_examples"] == 16

        cfg = SamplerConfig(
            kind="plain-descent", steps=3, step_size=0.01, buffer_size=32, init="uniform"
        )
        sampler = ContrastiveSampler(cfg, data, "cpu")
        x = sampler.draw(model, 8)
        assert x.shape == (8, 3, 32, 32) and sys.modules["tb_proto_pkg"].CALLS == [3]
        with pytest.raises(Exception, match="choose one of: .*plain-descent"):
            SamplerConfig(kind="langevin-9000")
    finally:
        PROTOCOLS.unregister("fast-check")
        SAMPLERS.unregister("plain-descent")
        sys.modules.pop("tb_proto_pkg", None)


def test_registries_share_one_mechanism():
    """Every plug-in kind is a Registry with an entry-point group and discovers its built-in package."""
    from bench.data import DATASETS
    from bench.models import ARCHS
    from bench.sampling.kinds import SAMPLERS
    from methods import METHODS
    from metrics import METRICS, PROTOCOLS

    groups = {}
    for reg in (METHODS, METRICS, PROTOCOLS, DATASETS, ARCHS, SAMPLERS):
        assert isinstance(reg, Registry)
        groups[reg.kind] = reg.group
    assert groups == {
        "method": "trilemma_bench.methods",
        "metric": "trilemma_bench.metrics",
        "protocol": "trilemma_bench.protocols",
        "dataset": "trilemma_bench.datasets",
        "architecture": "trilemma_bench.archs",
        "sampler": "trilemma_bench.samplers",
    }
    assert {"quick", "standard", "paper"} <= set(PROTOCOLS.names()) and {"sgld", "pyld"} <= set(
        SAMPLERS.names()
    )


def test_a_registry_imports_the_public_modules_of_its_packages(tmp_path, monkeypatch):
    pkg = tmp_path / "tb_builtin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from bench.core.registry import Registry\nREG = Registry('gadget', packages=('tb_builtin_pkg',))\n"
    )
    (pkg / "one.py").write_text("from tb_builtin_pkg import REG\nREG.register('one', 1)\n")
    (pkg / "_private.py").write_text(
        "raise RuntimeError('a private module is not a built-in entry')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import tb_builtin_pkg

    try:
        assert tb_builtin_pkg.REG.names() == ["one"] and tb_builtin_pkg.REG.get("one") == 1
    finally:
        for m in [m for m in sys.modules if m.startswith("tb_builtin_pkg")]:
            sys.modules.pop(m)
