"""The best-on-validation checkpoint (the JEM++ / EB-JDAT references select it) and eval.checkpoint."""

from __future__ import annotations

import torch
from conftest import only_run

from bench.train import checkpoint


def test_best_checkpoint_is_the_highest_validation_accuracy_and_is_evaluated(
    bench_cli, results_root, shapes_data_dir
):
    res = bench_cli(
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "-q",
        "--out",
        str(results_root),
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "data.val_size=100",
        "--set",
        "train.epochs=3",
        "--set",
        "train.eval_every=0.5",
        "--set",
        "eval.checkpoint=best",
        "--set",
        "eval.n_examples=32",
    )
    assert res.exit_code == 0, res.stderr
    run_dir, rec = only_run(results_root)
    vals = rec["training"]["validation"]
    assert len(vals) == 6 and all(v["split"] == "val" and v["n_examples"] == 100 for v in vals)
    best = max(
        vals, key=lambda v: (v["accuracy"], -v["step"])
    )  # the first step reaching the maximum
    assert rec["training"]["best"]["accuracy"] == best["accuracy"]
    assert rec["training"]["best"]["step"] == best["step"]
    assert rec["evaluated_checkpoint"]["checkpoint"] == "checkpoints/best.pt"
    assert rec["evaluated_checkpoint"]["step"] == best["step"]
    saved = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    assert saved["step"] == best["step"]
    if (
        best["step"] != rec["training"]["steps_done"]
    ):  # then the evaluated weights differ from the final ones
        final = checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]
        assert any(not torch.equal(final[k], saved["model"][k]) for k in final)


def test_best_without_a_validation_split_is_refused_before_training(
    bench_cli, results_root, shapes_data_dir
):
    res = bench_cli(
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "--out",
        str(results_root),
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "eval.checkpoint=best",
    )
    assert (
        res.exit_code == 2
        and len(res.error_lines) == 1
        and "data.val_size > 0" in res.error_lines[0]
    )
    assert not (results_root / "runs").exists(), list(results_root.rglob("*"))


def test_load_run_model_follows_eval_checkpoint(bench_cli, results_root, shapes_data_dir):
    from bench.run.saved_runs import load_run_model

    res = bench_cli(
        "run",
        "--method",
        "ce",
        "--preset",
        "smoke",
        "-q",
        "--out",
        str(results_root),
        "--data-dir",
        str(shapes_data_dir),
        "--set",
        "data.val_size=100",
        "--set",
        "train.epochs=2",
        "--set",
        "train.eval_every=0.25",
        "--set",
        "eval.checkpoint=best",
        "--set",
        "eval.n_examples=16",
    )
    assert res.exit_code == 0, res.stderr
    (run_dir,) = (results_root / "runs").iterdir()
    model, *_ = load_run_model(run_dir)
    best = checkpoint.load(run_dir / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    model, *_ = load_run_model(run_dir, checkpoint_path=str(run_dir / "checkpoints" / "last.pt"))
    last = checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())
