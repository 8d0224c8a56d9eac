"""The README's third-party plugin example registers and trains as the README says."""

from __future__ import annotations

import json
import re
import sys
import types

from methods import METHODS

from conftest import REPO_ROOT


def test_readme_plugin_example_trains(bench_cli, results_root, shapes_data_dir):
    text = (REPO_ROOT / "README.md").read_text()
    (code,) = re.findall(r"```python\n(# my_plugin\.py\n.*?)```", text, re.S)
    assert len(code.splitlines()) < 40  # the architecture promises a plugin in under 40 lines
    module = types.ModuleType("my_plugin")
    sys.modules["my_plugin"] = module
    try:
        exec(compile(code, "README.md:my_plugin.py", "exec"), module.__dict__)
        assert "mixed-at" in METHODS.names()
        res = bench_cli("run", "--method", "mixed-at", "--preset", "smoke", "-q", "--out", str(results_root),
                        "--data-dir", str(shapes_data_dir), "--set", "method.steps=2", "--set", "train.max_steps=2",
                        "--set", "eval.n_examples=16")
        assert res.exit_code == 0, res.stderr
        (run_dir,) = (results_root / "runs").iterdir()
        rec = json.loads((run_dir / "record.json").read_text())
        assert rec["config"]["method_cfg"] == {"eps": 8 / 255, "steps": 2, "clean_weight": 0.5}
        # the method's provider is recorded (a module not installed as a package: its name, no version)
        assert {"kind": "method", "name": "mixed-at", "package": "my_plugin", "version": None,
                "module": "my_plugin"} in rec["environment"]["plugins"]
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
        res = bench_cli("eval", complete_run.name, "--out", str(results), "--protocol", "custom",
                        "--metrics", "noise-acc", "--set", "noise-acc.sigma=0.2", "-q")
        assert res.exit_code == 0, res.stderr
        assert "noisy accuracy" in res.stdout and "at sigma 0.2" in res.stdout
        table = bench_cli("compare", "--out", str(results), "--format", "csv")
        header = table.stdout.splitlines()[0].split(",")
        assert "custom/noise[sigma=0.2]" in header and header.index("quick/pgd") < header.index("custom/noise[sigma=0.2]")
    finally:
        METRICS.unregister("noise-acc")
        sys.modules.pop("my_metrics", None)
