"""External models (`bench eval --model robustbench:NAME`): records of kind external, evaluated
through the same path as saved runs, shown by `bench compare` beside the reported row of the entry."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torch.nn as nn

from bench.run.evaluation import EvalOptions
from bench.tools.zoo.external import ExternalEnergyModel, evaluate_external, file_sha256


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


def saved(net: nn.Module, path) -> dict:
    torch.save(net.state_dict(), path)
    return {"source": "test", "name": "Standard", "file": str(path), "sha256": file_sha256(path)}


def records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/record.json"))]


def test_wrapper_energy_is_minus_logsumexp_of_the_logits():
    net = tiny_net()
    model = ExternalEnergyModel(net, 10).eval()
    x = torch.rand(5, 3, 32, 32)
    logits = net(x)
    assert torch.allclose(model(x), logits)
    assert torch.allclose(model.energy(x), -torch.logsumexp(logits, 1), atol=1e-6)
    y = torch.tensor([0, 1, 2, 3, 4])
    assert torch.allclose(model.energy(x, y), -logits[torch.arange(5), y], atol=1e-6)


def test_external_record_evaluates_merges_and_sits_beside_its_reported_row(
    tmp_path, shapes_data_dir, bench_cli
):
    out = tmp_path / "results"
    net = tiny_net()
    source = saved(net, tmp_path / "Standard.pt")
    kw = dict(
        method="robustbench:Standard",
        arch="Standard",
        dataset="shapes10",
        source=source,
        out=out,
        data_dir=str(shapes_data_dir),
        device="cpu",
    )
    quiet = dict(show_progress=False)
    results, _, rec = evaluate_external(
        net, EvalOptions(protocol="quick", n_examples=16, **quiet), **kw
    )
    assert set(results) == {"clean", "pgd"}
    assert (
        rec["kind"] == "external"
        and rec["method"] == "robustbench:Standard"
        and rec["arch"] == "Standard"
    )
    assert rec["external"]["sha256"] == source["sha256"] and rec["status"] == "complete"
    quick = rec["evaluations"]["quick"]
    assert (
        quick["clean"]["n_examples"] == 16
        and quick["pgd"]["accuracy"] <= quick["clean"]["accuracy"]
    )

    # another protocol on the same file: the same record; energy's generated samples from the generic SGLD
    over = {"energy": {"n_generated": 8, "sampler_steps": 3, "attack": {"steps": 2}}}
    opts = EvalOptions("standard", ["clean", "energy"], n_examples=8, overrides=over, **quiet)
    results, _, rec2 = evaluate_external(net, opts, **kw)
    assert rec2["run_id"] == rec["run_id"] and len(records(out)) == 1
    assert (
        set(rec2["evaluations"]) == {"quick", "standard"} and rec2["evaluations"]["quick"] == quick
    )
    (energy,) = [
        v for k, v in rec2["evaluations"]["standard"].items() if k.split("[")[0] == "energy"
    ]
    assert (
        energy["n_generated"] == 8 and energy["metric"] == "energy"
    )  # stored under its changed settings

    # a different file (other weights) is another model: a new record
    other = tiny_net(1)
    evaluate_external(
        other,
        EvalOptions(protocol="quick", n_examples=8, metrics=["clean"], **quiet),
        **{**kw, "source": saved(other, tmp_path / "other.pt")},
    )
    assert len(records(out)) == 2

    res = bench_cli("compare", "--out", str(out), "--format", "csv")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert {r["kind"] for r in rows} == {"external"} and len(rows) == 2

    res = bench_cli("compare", "--out", str(out), "--reference", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    ids = [r["run_id"] for r in rows]
    i = ids.index(rec["run_id"])
    assert rows[i]["kind"] == "external"
    # the last external row of the entry is followed by the entry's reported RobustBench row
    last = max(k for k, r in enumerate(rows) if r["method"] == "robustbench:Standard")
    assert (
        rows[last + 1]["run_id"] == "Standard (RobustBench)"
        and rows[last + 1]["kind"] == "reported"
    )
    assert rows[-1]["kind"] == "reported"


def test_external_model_of_the_wrong_class_count_is_refused_before_writing(
    tmp_path, shapes_data_dir
):
    from bench.core.errors import BenchError

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 100))
    out = tmp_path / "results"
    with pytest.raises(BenchError, match="100"):
        evaluate_external(
            net,
            EvalOptions(protocol="quick", n_examples=4, show_progress=False),
            method="robustbench:X",
            arch="X",
            dataset="shapes10",
            source=saved(net, tmp_path / "x.pt"),
            out=out,
            data_dir=str(shapes_data_dir),
            device="cpu",
        )
    assert not out.exists(), list(out.rglob("*"))


def test_model_flag_without_robustbench_or_with_bad_input_is_one_line(tmp_path, bench_cli):
    out = tmp_path / "results"
    res = bench_cli("eval", "--model", "zoo:Foo", "--model-dir", str(tmp_path), "--out", str(out))
    assert (
        res.exit_code != 0
        and len(res.error_lines) == 1
        and "robustbench:NAME" in res.error_lines[0]
    )
    res = bench_cli("eval", "--model", "robustbench:Foo", "--out", str(out))
    assert res.exit_code != 0 and len(res.error_lines) == 1 and "--model-dir" in res.error_lines[0]
    assert not out.exists()


# -- through robustbench's own loader (skipped where robustbench is not installed) ------------------
ZOO = "Wong2020Fast"  # PreActResNet-18: among the smallest CIFAR-10 Linf entries, builds in < 1 s


@pytest.fixture
def robustbench_zoo():
    pytest.importorskip("pyautoattack")
    from bench.tools.zoo.robustbench import import_robustbench, zoo_entries

    try:
        import_robustbench()
    except Exception as exc:  # not installed (BenchError): skip
        pytest.skip(str(exc))
    return zoo_entries("cifar10")


def test_zoo_model_loads_through_robustbench_and_evaluates(
    tmp_path, shapes_data_dir, bench_cli, robustbench_zoo
):
    torch.manual_seed(0)
    net = robustbench_zoo[ZOO]["model"]()
    folder = tmp_path / "models" / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
        folder / f"{ZOO}.pt",
    )
    out = tmp_path / "results"
    args = (
        "eval",
        "--model",
        f"robustbench:{ZOO}",
        "--model-dir",
        str(tmp_path / "models"),
        "--dataset",
        "shapes10",
        "--zoo-dataset",
        "cifar10",
        "--data-dir",
        str(shapes_data_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "-q",
    )
    res = bench_cli(*args, "--protocol", "quick", "-n", "8", "--set", "pgd.steps=2")
    assert res.exit_code == 0, res.stderr
    (rec,) = records(out)
    assert (
        rec["kind"] == "external" and rec["method"] == f"robustbench:{ZOO}" and rec["arch"] == ZOO
    )
    assert rec["external"]["sha256"] == file_sha256(folder / f"{ZOO}.pt")
    assert set(rec["evaluations"]["quick"]) == {
        "clean",
        "pgd[steps=2]",
    }  # PGD stored under its changed steps
    # the loaded weights are the saved ones: the recorded clean accuracy is the saved net's
    from bench.core.config import DataConfig
    from bench.data import load_dataset

    data = load_dataset(DataConfig(dataset="shapes10", data_dir=str(shapes_data_dir)))
    with torch.no_grad():
        acc = (
            (net.eval()(data.x_test[:8].float() / 255).argmax(1) == data.y_test[:8])
            .float()
            .mean()
            .item()
        )
    assert rec["evaluations"]["quick"]["clean"]["accuracy"] == pytest.approx(acc)


def test_zoo_bad_input_is_one_line_and_writes_nothing(
    tmp_path, bench_cli, shapes_data_dir, robustbench_zoo
):
    out, models = tmp_path / "results", tmp_path / "models"
    base = (
        "eval",
        "--model-dir",
        str(models),
        "--dataset",
        "shapes10",
        "--zoo-dataset",
        "cifar10",
        "--data-dir",
        str(shapes_data_dir),
        "--out",
        str(out),
        "--device",
        "cpu",
        "-q",
        "--protocol",
        "quick",
    )
    res = bench_cli(*base, "--model", "robustbench:NoSuchModel2099")
    assert (
        res.exit_code != 0
        and len(res.error_lines) == 1
        and "not in RobustBench's cifar10 Linf model zoo" in res.stderr
    )

    res = bench_cli(*base, "--model", f"robustbench:{ZOO}")
    assert res.exit_code != 0 and len(res.error_lines) == 1, res.stderr
    line = res.error_lines[0]
    assert (
        str(models / "cifar10" / "Linf" / f"{ZOO}.pt") in line
        and str(models / "cifar10" / "Linf") in line
    )
    assert (
        f"load_model('{ZOO}', model_dir='{models}', dataset='cifar10', threat_model='Linf')" in line
    )
    assert not models.exists() and not out.exists()

    # weights of another architecture (a WideResNet-28-4) under this entry's name
    folder = models / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save(
        {"state_dict": robustbench_zoo["Ding2020MMA"]["model"]().state_dict()}, folder / f"{ZOO}.pt"
    )
    res = bench_cli(*base, "--model", f"robustbench:{ZOO}")
    assert res.exit_code != 0 and len(res.error_lines) == 1, res.stderr
    assert "does not hold weights of RobustBench's Wong2020Fast" in res.error_lines[0]
    assert not out.exists()
