"""`bench sweep SPEC.yaml`: a grid of runs as submitit jobs; `bench sweep-status DIR`: where each cell stands."""

from __future__ import annotations

import click

from bench.cli.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("spec", metavar="SPEC.yaml")
@click.option(
    "--launcher",
    type=click.Choice(["local", "slurm"]),
    default=None,
    help="local: processes on this machine (launcher.local.max_parallel at once), waiting for them; "
    "slurm: one job array, then return. Default: the spec's launcher.default, else local.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the grid, what each cell would get and, for slurm, the sbatch script; submit and write "
    "nothing.",
)
@click.option(
    "--out",
    default="results",
    show_default=True,
    help="Results root; runs go to OUT/runs/<run-id>/.",
)
@click.option(
    "--dir",
    "directory",
    default=None,
    metavar="DIR",
    help="The sweep's directory (default: OUT/sweeps/<spec name>).",
)
def sweep(spec, launcher, dry_run, out, directory):
    """Run a grid of methods x seeds x settings, one run per cell, through submitit.

    Every cell's config is resolved and checked before anything is submitted. Submitting the same
    spec again is safe: complete and running cells are skipped, interrupted ones resume exactly,
    failed ones are retried up to the spec's `retries:` and then reported. The sweep's directory
    holds the spec, the grid, a link to each cell's run and submitit's jobs. See docs/scale.md.

    \b
    Examples:
      bench sweep docs/examples/sweep.yaml --dry-run
      bench sweep docs/examples/sweep.yaml
      bench sweep docs/examples/sweep.yaml --launcher slurm --dry-run
      bench sweep-status results/sweeps/methods-x-seeds
      bench compare --sweep results/sweeps/methods-x-seeds --group seeds
    """
    from bench.tools.sweep.submit import submit_sweep

    submit_sweep(
        spec,
        launcher=launcher,
        dry_run=dry_run,
        out=out,
        directory=directory,
        echo=click.echo,
        note=lambda line: click.echo(line, err=True),
    )


@click.command("sweep-status", context_settings=CONTEXT)
@click.argument("directory", metavar="DIR")
def sweep_status(directory):
    """A table of a sweep's cells: pending, running, complete, failed (with the error's first line)
    or interrupted, with each cell's run and job.

    \b
    Examples:
      bench sweep-status results/sweeps/methods-x-seeds
    """
    from bench.tools.sweep.submit import status_report

    click.echo(status_report(directory))


COMMANDS = (sweep, sweep_status)
