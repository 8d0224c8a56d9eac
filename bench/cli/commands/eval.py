"""`bench eval RUN` and `bench eval --model robustbench:NAME`: the flags become an
:class:`~bench.run.evaluation.EvalOptions`, evaluated along the one evaluation path
(docs/evaluation.md)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from bench.cli.commands._common import CONTEXT


@click.command("eval", context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN", required=False)
@click.option(
    "--model",
    "model_ref",
    default=None,
    metavar="robustbench:NAME",
    help="Evaluate a RobustBench zoo model instead of a run (its results go into a record of kind external).",
)
@click.option(
    "--model-dir",
    default=None,
    metavar="DIR",
    help="RobustBench's model folder, holding DIR/<dataset>/Linf/<NAME>.pt (with --model).",
)
@click.option(
    "--dataset",
    default="cifar10",
    show_default=True,
    help="Test data for --model (a dataset name or npz:FILE).",
)
@click.option(
    "--zoo-dataset",
    default=None,
    help="The zoo of --model (cifar10, cifar100; default: --dataset).",
)
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    help="Where --dataset's files are (with --model).",
)
@click.option(
    "--protocol",
    "-p",
    default="standard",
    show_default=True,
    help="quick, standard (RobustBench style) or paper (the EB-JDAT authors' settings); see `bench list protocols`.",
)
@click.option(
    "--metrics",
    "metrics_",
    default=None,
    metavar="M1,M2",
    help="Only these metrics of the protocol (e.g. autoattack,energy); named metrics must be able to run.",
)
@click.option(
    "--n-examples",
    "-n",
    type=int,
    default=None,
    help="Test images per metric (default: the run's eval.n_examples).",
)
@click.option(
    "--samples",
    default=None,
    metavar="FILE.npz",
    help="Generated samples (uint8 NHWC under 'x') for fid/kid/is/energy.",
)
@click.option(
    "--weights",
    default=None,
    metavar="PATH",
    help="InceptionV3 weights for FID (see `bench fid-weights`).",
)
@click.option(
    "--checkpoint",
    default=None,
    metavar="PATH",
    help="Evaluate this checkpoint instead of checkpoints/last.pt.",
)
@click.option(
    "--fid-samples",
    type=int,
    default=None,
    metavar="N",
    help="Generated images for fid/kid/is (their n_samples; -n does not bound them). Under 10,000 a FID "
    "is biased upwards: compare it only at equal n.",
)
@click.option(
    "--fid-reference",
    type=int,
    default=None,
    metavar="N",
    help="Reference (real) images for fid/kid (their n_real; default: the whole split).",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="METRIC.KEY=VALUE",
    help="Override a metric setting, e.g. --set autoattack.n_examples=200 --set fid.n_samples=2000.",
)
@click.option(
    "--batch-size", type=int, default=None, help="Evaluation batch size (default: the run's)."
)
@click.option(
    "--tf32/--no-tf32",
    default=None,
    help="TF32 matmuls and convolutions on a CUDA GPU (faster, less precise); default: the run's eval.tf32 "
    "(off: full fp32). Each result records the flags it ran under.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option(
    "--out", default="results", show_default=True, help="Results root holding runs/<run-id>/."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_(run_ref, model_ref, checkpoint, device, out, **flags):
    """Evaluate a saved run and merge the results into its record (earlier results are kept).

    \b
    Examples:
      bench eval 20261124-101500-pgd-at-shapes10-1a2b3c
      bench eval RUN --protocol standard --n-examples 500 --set autoattack.n_examples=200
      bench eval RUN --protocol paper --metrics clean,pgd,autoattack
      bench eval RUN --metrics fid,kid,is --samples samples.npz --weights inception.pth
      bench eval RUN --metrics fid,kid --fid-samples 10000 --fid-reference 50000
      bench eval --model robustbench:Wong2020Fast --model-dir models --data-dir data --protocol standard
    """
    from bench.core.errors import BenchError, InterruptedRun
    from bench.core.run_dirs import resolve_run
    from bench.run.evaluation import EvalOptions, evaluate_saved_run, format_result

    zoo = {k: flags.pop(k) for k in ("model_dir", "dataset", "zoo_dataset", "data_dir")}
    if (run_ref is None) == (model_ref is None):
        raise BenchError(
            "name a run (bench eval RUN) or a zoo model (bench eval --model robustbench:NAME "
            "--model-dir DIR), not both"
            if run_ref
            else "bench eval needs a RUN or --model robustbench:NAME"
        )
    if model_ref is not None and flags["tf32"] is not None:
        raise BenchError(
            "--tf32/--no-tf32 is for runs (it overrides their eval.tf32); a zoo model is evaluated in "
            "full fp32: leave the flag out"
        )
    if model_ref is not None and (zoo["model_dir"] is None or checkpoint is not None):
        raise BenchError(
            "--model needs --model-dir DIR (RobustBench's folder: DIR/<dataset>/Linf/<NAME>.pt)"
            if zoo["model_dir"] is None
            else "--checkpoint is for runs; a zoo model's weights come from --model-dir"
        )
    opts = EvalOptions.from_flags(**flags, echo=lambda s: click.echo(s, err=True))
    t0 = time.perf_counter()
    try:
        if model_ref is not None:
            from bench.tools.zoo.robustbench import evaluate_zoo

            results, _, record = evaluate_zoo(model_ref, opts, out=out, device=device, **zoo)
            run_dir = resolve_run(record["run_id"], out)
        else:
            run_dir = resolve_run(run_ref, out)
            results, _, record = evaluate_saved_run(run_dir, opts, checkpoint, device)
    except KeyboardInterrupt as exc:  # the evaluation saved what finished; its message says so
        raise InterruptedRun(str(exc) or "evaluation interrupted") from None
    protocol = opts.protocol
    for name, res in results.items():
        click.echo(f"{record['run_id']} [{protocol}] {name:11s} {format_result(name, res)}")
        for art, rel in (res.get("artifacts") or {}).items():
            click.echo(
                f"{'':{len(record['run_id']) + len(protocol) + 4}}{art}: {Path(run_dir) / rel}"
            )
    small = sorted(
        f"{name} on {res.get('n_generated', res.get('n_samples'))}"
        for name, res in results.items()
        if name.split("[")[0] == "fid" and res.get("small_n")
    )
    if small:
        click.echo(
            f"warning: {', '.join(small)} generated samples, under 10,000: FID is biased upwards at small n; "
            "compare it only with FIDs of the same n (KID is unbiased)",
            err=True,
        )
    click.echo(f"record: {Path(run_dir) / 'record.json'} ({time.perf_counter() - t0:.1f} s)")


COMMANDS = (eval_,)
