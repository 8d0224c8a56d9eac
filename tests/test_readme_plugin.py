"""The README's third-party plugin example registers and trains as the README says."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from pathlib import Path

from conftest import REPO_ROOT, only_run

from methods import METHODS


def test_readme_plugin_example_trains(bench_cli, results_root, shapes_data_dir):
    text = (REPO_ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(# my_plugin\.py\n.*?)```", text, re.S)
    assert len(code.splitlines()) < 40  # the architecture promises a plugin in under 40 lines
    module = types.ModuleType("my_plugin")
    sys.modules["my_plugin"] = module
    try:
        exec(compile(code, "README.md:my_plugin.py", "exec"), module.__dict__)
        assert "mixed-at" in METHODS.names()
        res = bench_cli(
            "run",
            "--method",
            "mixed-at",
            "--preset",
            "smoke",
            "-q",
            "--out",
            str(results_root),
            "--data-dir",
            str(shapes_data_dir),
            "--set",
            "method.steps=2",
            "--set",
            "train.max_steps=2",
            "--set",
            "eval.n_examples=16",
        )
        assert res.exit_code == 0, res.stderr
        run_dir, rec = only_run(results_root)
        assert rec["config"]["method_cfg"] == {"eps": 8 / 255, "steps": 2, "clean_weight": 0.5}
        # the method's provider is recorded (a module not installed as a package: its name, no version)
        assert {
            "kind": "method",
            "name": "mixed-at",
            "package": "my_plugin",
            "version": None,
            "module": "my_plugin",
            "source_sha256": None,  # run from the README's text: no file to digest
        } in rec["environment"]["plugins"]
        logged = [h for h in rec["training"]["history"] if "loss" in h][-1]
        assert abs(logged["loss"] - 0.5 * logged["ce"] - 0.5 * logged["ce_adv"]) < 1e-4
    finally:
        METHODS.unregister("mixed-at")
        sys.modules.pop("my_plugin", None)


def test_readme_metric_example_reaches_eval_and_compare(bench_cli, tmp_path, complete_run):
    import shutil

    from metrics import METRICS

    text = (REPO_ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(# my_metrics\.py\n.*?)```", text, re.S)
    module = types.ModuleType("my_metrics")
    sys.modules["my_metrics"] = module
    results = tmp_path / "results"
    shutil.copytree(complete_run, results / "runs" / complete_run.name)
    try:
        exec(compile(code, "README.md:my_metrics.py", "exec"), module.__dict__)
        res = bench_cli(
            "eval",
            complete_run.name,
            "--out",
            str(results),
            "--protocol",
            "custom",
            "--metrics",
            "noise-acc",
            "--set",
            "noise-acc.sigma=0.2",
            "-q",
        )
        assert res.exit_code == 0, res.stderr
        assert "noisy accuracy" in res.stdout and "at sigma 0.2" in res.stdout
        table = bench_cli("compare", "--out", str(results), "--format", "csv")
        header = table.stdout.splitlines()[0].split(",")
        assert "custom/noise[sigma=0.2]" in header and header.index("quick/pgd") < header.index(
            "custom/noise[sigma=0.2]"
        )
    finally:
        METRICS.unregister("noise-acc")
        sys.modules.pop("my_metrics", None)


# -- the dataset, protocol and sampler examples ---------------------------------------------------------


def _readme_example(name: str, group: str) -> tuple[types.ModuleType, dict[str, str]]:
    """Exec the README's ``# NAME.py`` block in a fresh module ``NAME``; return it and the entry
    points of ``group`` that the README's TOML block after it declares."""
    import tomllib

    text = (REPO_ROOT / "README.md").read_text()
    ((code, toml),) = re.findall(
        rf"```python\n(# {re.escape(name)}\.py\n.*?)```\s*```toml\n(.*?)```", text, re.S
    )
    assert len(code.splitlines()) <= 30  # a short example
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, f"README.md:{name}.py", "exec"), module.__dict__)
    return module, tomllib.loads(toml)["project"]["entry-points"][group]


def _entry_target(value: str, module: types.ModuleType):
    """What an entry point ``module[:attr]`` names, resolved in the exec'd module."""
    mod, _, attr = value.partition(":")
    assert mod == module.__name__
    return getattr(module, attr) if attr else module


def test_readme_dataset_example_trains(bench_cli, results_root, shapes_data_dir):
    import numpy as np
    import torch

    from bench.core.config import DataConfig
    from bench.data import DATASETS
    from bench.data.shapes import CLASSES, load_arrays

    try:
        module, entries = _readme_example("my_dataset", "trilemma_bench.datasets")
        assert entries == {"disk-vs-ring": "my_dataset:disk_vs_ring"}
        assert DATASETS.get("disk-vs-ring") is _entry_target(entries["disk-vs-ring"], module)

        # the images and labels are shapes10's disks (0) and rings (1), in the contract's dtypes
        a = load_arrays(shapes_data_dir)
        disk, ring = CLASSES.index("disk"), CLASSES.index("ring")
        data = module.disk_vs_ring(
            DataConfig(dataset="disk-vs-ring", data_dir=str(shapes_data_dir))
        )
        for split in ("train", "test"):
            y0 = a[f"y_{split}"]
            keep = (y0 == disk) | (y0 == ring)
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (3, 32, 32)
            assert np.array_equal(x.numpy(), a[f"x_{split}"][keep].transpose(0, 3, 1, 2))
            assert np.array_equal(y.numpy(), (y0[keep] == ring).astype(np.int64))
        assert data.classes == ["disk", "ring"]

        res = bench_cli(
            "run",
            "--method",
            "ce",
            "--preset",
            "smoke",
            "--dataset",
            "disk-vs-ring",
            "-q",
            "--out",
            str(results_root),
            "--data-dir",
            str(shapes_data_dir),
            "--set",
            "train.max_steps=2",
            "--set",
            "eval.n_examples=16",
        )
        assert res.exit_code == 0, res.stderr
        run_dir, rec = only_run(results_root)
        n_test = int(((a["y_test"] == disk) | (a["y_test"] == ring)).sum())
        assert rec["dataset"] == "disk-vs-ring"
        assert {
            k: rec["data"][k] for k in ("name", "num_classes", "train", "test", "image_shape")
        } == {
            "name": "disk-vs-ring",
            "num_classes": 2,
            "train": 512,
            "test": n_test,
            "image_shape": [3, 32, 32],
        }
        assert rec["data"]["source"].startswith("shapes10 classes disk, ring (")
        assert rec["evaluations"]["quick"]["clean"]["n_examples"] == 16
        # the dataset's provider is recorded, as a method's is (a module not installed: no version)
        assert {
            "kind": "dataset",
            "name": "disk-vs-ring",
            "package": "my_dataset",
            "version": None,
            "module": "my_dataset",
            "source_sha256": None,  # run from the README's text: no file to digest
        } in rec["environment"]["plugins"]
    finally:
        DATASETS.unregister("disk-vs-ring")
        sys.modules.pop("my_dataset", None)


def test_readme_protocol_example_reaches_eval_and_compare(bench_cli, tmp_path, complete_run):
    import shutil

    from metrics import PROTOCOLS

    results = tmp_path / "results"
    shutil.copytree(complete_run, results / "runs" / complete_run.name)
    try:
        module, entries = _readme_example("my_protocol", "trilemma_bench.protocols")
        assert entries == {"pgd-50": "my_protocol:PGD50"}
        assert PROTOCOLS.get("pgd-50") is _entry_target(entries["pgd-50"], module)

        listed = bench_cli("list", "protocols")
        assert listed.exit_code == 0 and "pgd-50" in listed.stdout and "PGD-50" in listed.stdout

        res = bench_cli(
            "eval",
            complete_run.name,
            "--out",
            str(results),
            "--protocol",
            "pgd-50",
            "-n",
            "16",
            "-q",
        )
        assert res.exit_code == 0, res.stderr
        rec = json.loads((results / "runs" / complete_run.name / "record.json").read_text())
        ours = rec["evaluations"]["pgd-50"]
        assert set(ours) == {"clean", "pgd"} and all(
            r["protocol"] == "pgd-50" for r in ours.values()
        )
        assert {k: ours["pgd"]["settings"][k] for k in ("eps", "alpha", "steps", "restarts")} == {
            "eps": 8 / 255,
            "alpha": 1 / 255,
            "steps": 50,
            "restarts": 2,
        }
        assert ours["pgd"]["n_examples"] == 16 and ours["pgd"]["reliable"] is True
        assert (
            rec["evaluations"]["quick"]["pgd"]["settings"]["steps"] == 20
        )  # the run's own result is kept
        # the protocol's provider is recorded, as a plugin method's is; the built-in quick is not listed
        assert [p for p in rec["environment"]["plugins"] if p["kind"] == "protocol"] == [
            {
                "kind": "protocol",
                "name": "pgd-50",
                "package": "my_protocol",
                "version": None,
                "module": "my_protocol",
            }
        ]

        table = bench_cli("compare", "--out", str(results), "--format", "csv")
        header = table.stdout.splitlines()[0].split(",")
        assert {"pgd-50/clean", "pgd-50/pgd", "quick/clean", "quick/pgd"} <= set(header)
        row = dict(zip(header, table.stdout.splitlines()[1].split(",")))
        assert float(row["pgd-50/pgd"]) == round(100 * ours["pgd"]["accuracy"], 2)
        brief = bench_cli("compare", "--out", str(results), "--protocol", "pgd-50")
        assert brief.exit_code == 0, brief.stderr
        lines = brief.stdout.splitlines()
        cells = [
            dict(
                zip([c.strip() for c in lines[0].split("|")], [c.strip() for c in line.split("|")])
            )
            for line in lines[2:3]
        ]
        assert float(cells[0]["pgd"]) == round(
            100 * ours["pgd"]["accuracy"], 2
        )  # the brief view shows pgd-50's numbers
        assert any(line.startswith("protocol pgd-50 (also stored: quick") for line in lines)
    finally:
        PROTOCOLS.unregister("pgd-50")
        sys.modules.pop("my_protocol", None)


def test_readme_sampler_example_trains_jempp_and_samples(bench_cli, results_root, shapes_data_dir):
    import dataclasses

    from bench.run.resolve import resolve_config
    from bench.sampling import SAMPLERS

    calls: list[dict] = []
    try:
        module, entries = _readme_example("my_sampler", "trilemma_bench.samplers")
        assert entries == {
            "sgld-anneal": "my_sampler"
        }  # names the module, whose import registers the kind
        kind = SAMPLERS.get("sgld-anneal")
        assert kind.run is module.sgld_anneal and kind.reference == "jem"
        listed = bench_cli("list", "samplers")  # described by its docstring's first line
        assert any(
            line.split()[:5] == ["sgld-anneal", "SGLD", "whose", "noise", "decays"]
            for line in listed.stdout.splitlines()
        )

        def counting(cfg, model, xs, y, steps, mode, trace):
            ticks = []
            if trace is not None and trace.get("on_step") is not None:
                on_step = trace["on_step"]
                trace["on_step"] = lambda: (ticks.append(1), on_step())
            out = kind.run(cfg, model, xs, y, steps, mode, trace)
            calls.append(
                {
                    "steps": steps,
                    "mode": mode,
                    "step_size": cfg.step_size,
                    "noise_std": cfg.noise_std,
                    "moved": float((out - xs).abs().max()),
                    "in_range": bool(out.abs().max() <= 1),
                    "shape": tuple(out.shape) == tuple(xs.shape),
                    "ticks": len(ticks),
                    "energy_start": trace is not None and "energy_start" in trace,
                }
            )
            return out

        SAMPLERS.register("sgld-anneal", dataclasses.replace(kind, run=counting), replace=True)

        # as the README says: switching the kind takes its reference's step settings (jem's SGLD: 1, 0.01),
        # keeps jem++'s chain length, and a step setting given with --set wins
        plain = resolve_config(
            "jem++", preset="smoke", overrides=["method.sampler.kind=sgld-anneal"]
        )
        assert (
            plain.method_cfg["sampler"]["step_size"],
            plain.method_cfg["sampler"]["noise_std"],
        ) == (1.0, 0.01)
        assert (
            plain.method_cfg["sampler"]["steps"]
            == resolve_config("jem++", preset="smoke").method_cfg["sampler"]["steps"]
        )
        own = resolve_config(
            "jem++",
            preset="smoke",
            overrides=["method.sampler.kind=sgld-anneal", "method.sampler.step_size=0.5"],
        )
        assert (own.method_cfg["sampler"]["step_size"], own.method_cfg["sampler"]["noise_std"]) == (
            0.5,
            0.01,
        )

        res = bench_cli(
            "run",
            "--method",
            "jem++",
            "--preset",
            "smoke",
            "-q",
            "--out",
            str(results_root),
            "--data-dir",
            str(shapes_data_dir),
            "--set",
            "method.sampler.kind=sgld-anneal",
            "--set",
            "train.max_steps=2",
            "--set",
            "eval.n_examples=16",
            "--set",
            "data.train_subset=128",
            "--set",
            "data.batch_size=32",
        )
        assert res.exit_code == 0, res.stderr
        run_dir, rec = only_run(results_root)
        sampler_cfg = rec["config"]["method_cfg"]["sampler"]
        assert (sampler_cfg["kind"], sampler_cfg["step_size"], sampler_cfg["noise_std"]) == (
            "sgld-anneal",
            1.0,
            0.01,
        )
        assert [p for p in rec["environment"]["plugins"] if p["kind"] == "sampler"] == [
            {
                "kind": "sampler",
                "name": "sgld-anneal",
                "package": "test_readme_plugin",
                "version": None,
                "module": "test_readme_plugin",
                "source_sha256": hashlib.sha256(
                    b"test_readme_plugin.py\0" + Path(__file__).read_bytes()
                ).hexdigest(),  # an edit of this file makes another configuration
            }
        ]  # the counting wrapper registered here stands in for my_sampler
        assert len(calls) == 2  # one draw per training step
        for c in calls:
            assert c == {
                "steps": 3,
                "mode": "train",
                "step_size": 1.0,
                "noise_std": 0.01,
                "moved": c["moved"],
                "in_range": True,
                "shape": True,
                "ticks": 0,
                "energy_start": True,
            }
            assert c["moved"] > 0
        assert any(
            "e_start" in h for h in rec["training"]["history"]
        )  # the trace reached the training log

        calls.clear()
        sampled = bench_cli(
            "sample",
            run_dir.name,
            "--out",
            str(results_root),
            "--sampler",
            "sgld-anneal",
            "-n",
            "4",
            "--steps",
            "2",
            "-q",
        )
        assert sampled.exit_code == 0, sampled.stderr
        assert "sgld-anneal 2 steps" in sampled.stdout
        assert [(c["steps"], c["ticks"], c["in_range"], c["moved"] > 0) for c in calls] == [
            (2, 2, True, True)
        ]
    finally:
        SAMPLERS.unregister("sgld-anneal")
        sys.modules.pop("my_sampler", None)
