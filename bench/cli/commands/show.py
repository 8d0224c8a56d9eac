"""`bench show RUN`: a run's record as a readable summary (or the raw record)."""

from __future__ import annotations

import json

import click

from bench.cli.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--out", default="results", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw record.")
def show(run_ref, out, as_json):
    """Print a run's record as a readable summary.

    \b
    Examples:
      bench show 20261124-101500-pgd-at-shapes10-1a2b3c
      bench show results/runs/<run-id> --json
    """
    from bench.core.record_reading import load_record
    from bench.core.run_dirs import resolve_run

    run_dir = resolve_run(run_ref, out)
    rec = load_record(run_dir)
    if as_json:
        click.echo(json.dumps(rec, indent=2))
        return
    from bench.leaderboard.summary import describe_record

    click.echo(describe_record(rec, run_dir))


COMMANDS = (show,)
