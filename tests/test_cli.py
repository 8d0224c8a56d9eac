"""`bench` end to end: run (ce, pgd-at, real CIFAR images), show, list, compare, --help."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.cli import cli


def _run_dir_from(stdout: str) -> Path:
    m = re.search(r"^record: (.+record\.json)$", stdout, re.M)
    assert m, stdout
    return Path(m.group(1)).parent


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ce", "pgd-at"])
def test_bench_run_smoke(method, bench_cli, results_root, tiny_args, shapes_data_dir):
    res = bench_cli("run", "--method", method, *tiny_args(results_root, shapes_data_dir))
    assert res.exit_code == 0, res.stderr
    run_dir = _run_dir_from(res.stdout)
    assert run_dir.parent == results_root / "runs"
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{method}-shapes10-[0-9a-f]{{6}}", run_dir.name)
    assert re.search(
        rf"^{run_dir.name} \[quick\]: clean \d+\.\d\d% \(n=32\), pgd \d+\.\d\d% \(n=32\)$",
        res.stdout,
        re.M,
    )
    assert (
        f"run {run_dir.name}: {method} on shapes10 (resnet8, preset smoke, seed 0, cpu)"
        in res.stderr
    )
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "complete" and rec["method"] == method and rec["preset"] == "smoke"
    assert rec["training"]["steps_done"] == 4
    if method == "pgd-at":
        assert (
            rec["config"]["method_cfg"]["steps"] == 3
        )  # methods/pgd_at.yaml, pgd-at's smoke preset
        assert "ce_adv" in rec["training"]["history"][-1]
        assert rec["config"]["optim"]["schedule"] == "step"
    else:
        assert "ce" in rec["training"]["history"][-1]


@pytest.mark.slow
def test_pgd_at_trains_on_real_cifar_images(
    cifar_npz, bench_cli, results_root, tiny_args, shapes_data_dir
):
    res = bench_cli(
        "run",
        "--method",
        "pgd-at",
        "--dataset",
        f"npz:{cifar_npz}",
        *tiny_args(results_root, shapes_data_dir),
    )
    assert res.exit_code == 0, res.stderr
    rec = json.loads((_run_dir_from(res.stdout) / "record.json").read_text())
    assert rec["status"] == "complete" and rec["dataset"] == f"npz:{cifar_npz}"
    assert rec["data"]["source"] == str(cifar_npz.resolve()) and rec["data"]["num_classes"] == 10
    assert rec["data"]["train"] == 128 and rec["data"]["test"] == round(0.2 * 5085)
    assert rec["evaluations"]["quick"]["pgd"]["n_examples"] == 32
    h = rec["training"]["history"]
    assert h and all(0 < e["ce_adv"] < 10 for e in h)


def test_show(bench_cli, complete_run):
    out = complete_run.parent.parent
    res = bench_cli("show", complete_run.name, "--out", str(out))
    assert res.exit_code == 0, res.stderr
    text = res.stdout
    assert f"run       {complete_run.name}  (complete)" in text
    assert "method    ce  dataset shapes10  arch resnet8  preset smoke  seed 0" in text
    assert "training  4/4 steps" in text and "eval [quick]" in text
    rec = json.loads((complete_run / "record.json").read_text())
    pgd_line = next(line for line in text.splitlines() if line.split()[:1] == ["pgd"])
    acc = rec["evaluations"]["quick"]["pgd"]["accuracy"]
    assert f"pgd         accuracy {100 * acc:.2f}%  n=32  95% CI [" in pgd_line, pgd_line
    assert re.search(r"^git       [0-9a-f]{40}", text, re.M)
    as_json = bench_cli("show", str(complete_run), "--json")  # a directory works without --out
    assert json.loads(as_json.stdout) == json.loads((complete_run / "record.json").read_text())
    by_record = bench_cli("show", str(complete_run / "record.json"))
    assert by_record.exit_code == 0 and complete_run.name in by_record.stdout


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("methods", {"ce", "pgd-at"}),
        ("datasets", {"shapes10", "cifar10", "cifar100", "npz:PATH"}),
        ("archs", {"resnet8", "resnet8-wide", "wrn-D-W"}),
        ("presets", {"smoke", "cpu", "paper"}),
        ("metrics", {"clean", "pgd"}),
        ("protocols", {"quick"}),
    ],
)
def test_list(kind, expected, bench_cli):
    res = bench_cli("list", kind)
    assert res.exit_code == 0, res.stderr
    names = {line.split()[0] for line in res.stdout.splitlines() if line.strip()}
    assert expected <= names
    if kind != "samplers":  # described, not just named
        assert all(
            len(line.split()) > 1 for line in res.stdout.splitlines() if line.split()[0] in expected
        )


def _commands():
    yield ()
    for name, cmd in cli.commands.items():
        yield (name,)
        for sub in getattr(cmd, "commands", {}):
            yield (name, sub)


@pytest.mark.parametrize("path", list(_commands()), ids=lambda p: " ".join(p) or "bench")
def test_help_shows_examples(path, bench_cli):
    res = bench_cli(*path, "--help")
    assert res.exit_code == 0, res.stderr
    assert "Examples:" in res.stdout
    examples = res.stdout.split("Examples:", 1)[1]
    assert re.search(rf"^\s+bench {' '.join(path)}".rstrip(), examples, re.M), examples
    short = bench_cli(*path, "-h")
    assert short.stdout == res.stdout


def test_version(bench_cli):
    from importlib.metadata import version

    res = bench_cli("--version")
    assert res.exit_code == 0 and version("trilemma-bench") in res.stdout
