"""`bench compare`: the leaderboard of all runs."""

from __future__ import annotations

import click

from bench.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--out", default="results", show_default=True, help="Results root to read runs from.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "json"]), default="md", show_default=True)
@click.option("--sort", default=None, metavar="COL", help="Sort by a column, e.g. quick/pgd (descending).")
@click.option("--ascending", is_flag=True, help="Sort ascending instead.")
@click.option("--filter", "filters", multiple=True, metavar="COL=VALUE",
              help="Keep rows where COL equals (or with !=, differs from) VALUE. Repeatable.")
@click.option("--reference", is_flag=True,
              help="Add published reference rows (EB-JDAT paper, RobustBench), marked kind=reported, after the measured ones.")
def compare(out, fmt, sort, ascending, filters, reference):
    """Leaderboard of all runs: a row per run, a column per protocol/metric (accuracy in %).

    \b
    Examples:
      bench compare
      bench compare --sort quick/pgd --filter dataset=shapes10
      bench compare --format latex > table.tex
      bench compare --reference --filter dataset=cifar10
    """
    from bench.compare import compare as build

    click.echo(build(out, fmt=fmt, sort=sort, ascending=ascending, filters=tuple(filters), reference=reference))


COMMANDS = (compare,)
