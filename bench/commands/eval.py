"""`bench eval RUN`: evaluate a saved run with a protocol and merge the results into its record.

The work is :func:`bench.evaluation.evaluate_saved_run`: nothing is written to the record until a
metric has produced its result, and an interrupted AutoAttack resumes when the same command is
run again.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from bench.commands._common import CONTEXT


@click.command("eval", context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--protocol", "-p", default="standard", show_default=True,
              help="quick, standard (RobustBench style) or paper (the EB-JDAT authors' settings); see `bench list protocols`.")
@click.option("--metrics", "metrics_", default=None, metavar="M1,M2",
              help="Only these metrics of the protocol (e.g. autoattack,energy); named metrics must be able to run.")
@click.option("--n-examples", "-n", type=int, default=None, help="Test images per metric (default: the run's eval.n_examples).")
@click.option("--samples", default=None, metavar="FILE.npz", help="Generated samples (uint8 NHWC under 'x') for fid/kid/is/energy.")
@click.option("--weights", default=None, metavar="PATH", help="InceptionV3 weights for FID (see `bench fid-weights`).")
@click.option("--checkpoint", default=None, metavar="PATH", help="Evaluate this checkpoint instead of checkpoints/last.pt.")
@click.option("--fid-samples", type=int, default=None, metavar="N",
              help="Generated images for fid/kid/is (their n_samples; -n does not bound them). Under 10,000 a FID "
                   "is biased upwards: compare it only at equal n.")
@click.option("--fid-reference", type=int, default=None, metavar="N",
              help="Reference (real) images for fid/kid (their n_real; default: the whole split).")
@click.option("--set", "sets", multiple=True, metavar="METRIC.KEY=VALUE",
              help="Override a metric setting, e.g. --set autoattack.n_examples=200 --set fid.n_samples=2000.")
@click.option("--batch-size", type=int, default=None, help="Evaluation batch size (default: the run's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--out", default="results", show_default=True, help="Results root holding runs/<run-id>/.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_(run_ref, protocol, metrics_, n_examples, samples, weights, checkpoint, fid_samples, fid_reference, sets,
          batch_size, device, out, quiet):
    """Evaluate a saved run and merge the results into its record (earlier results are kept).

    \b
    Examples:
      bench eval 20261124-101500-pgd-at-shapes10-1a2b3c
      bench eval RUN --protocol standard --n-examples 500 --set autoattack.n_examples=200
      bench eval RUN --protocol paper --metrics clean,pgd,autoattack
      bench eval RUN --metrics fid,kid,is --samples samples.npz --weights inception.pth
      bench eval RUN --metrics fid,kid --fid-samples 10000 --fid-reference 50000
    """
    from bench.evaluation import evaluate_saved_run, format_result, generation_overrides, merge_overrides, \
        parse_overrides
    from bench.records import resolve_run

    run_dir = resolve_run(run_ref, out)
    metrics = [m.strip() for m in metrics_.split(",") if m.strip()] if metrics_ else None
    overrides = merge_overrides(generation_overrides(protocol, metrics, fid_samples, fid_reference),
                                parse_overrides(sets))
    t0 = time.perf_counter()
    results, skipped, record = evaluate_saved_run(
        run_dir, protocol=protocol, metrics=metrics, n_examples=n_examples, samples=samples, weights=weights,
        checkpoint=checkpoint, device=device, batch_size=batch_size, overrides=overrides,
        show_progress=not quiet, echo=lambda s: click.echo(s, err=True))
    for name, res in results.items():
        click.echo(f"{record['run_id']} [{protocol}] {name:11s} {format_result(name, res)}")
        for art, rel in (res.get("artifacts") or {}).items():
            click.echo(f"{'':{len(record['run_id']) + len(protocol) + 4}}{art}: {Path(run_dir) / rel}")
    small = sorted(f"{name} on {res.get('n_generated', res.get('n_samples'))}" for name, res in results.items()
                   if name.split("[")[0] == "fid" and res.get("small_n"))
    if small:
        click.echo(f"warning: {', '.join(small)} generated samples, under 10,000: FID is biased upwards at small n; "
                   "compare it only with FIDs of the same n (KID is unbiased)", err=True)
    click.echo(f"record: {Path(run_dir) / 'record.json'} ({time.perf_counter() - t0:.1f} s)")


COMMANDS = (eval_,)
