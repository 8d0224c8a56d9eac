"""`bench compare`: the leaderboard of all runs."""

from __future__ import annotations

import click

from bench.cli.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--out", default="results", show_default=True, help="Results root to read runs from.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "csv", "latex", "json"]),
    default="md",
    show_default=True,
)
@click.option(
    "--sort", default=None, metavar="COL", help="Sort by a column, e.g. quick/pgd (descending)."
)
@click.option("--ascending", is_flag=True, help="Sort ascending instead.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="COL=VALUE",
    help="Keep rows where COL equals VALUE; also COL!=VALUE and numeric COL>N, COL>=N, COL<N, COL<=N "
    "(e.g. 'standard/autoattack>40'). Repeatable.",
)
@click.option(
    "--reference",
    is_flag=True,
    help="Add published reference rows (EB-JDAT paper, RobustBench), marked kind=reported, after the measured ones.",
)
@click.option(
    "--ci", is_flag=True, help="Show each accuracy's 95% Wilson interval [lo, hi] (from its n)."
)
@click.option(
    "--reliable-only",
    is_flag=True,
    help="Blank robustness numbers that failed a guardrail check (!) or were never checked (?).",
)
@click.option(
    "--group",
    type=click.Choice(["seeds"]),
    default=None,
    help="seeds: one row per method/dataset/arch/preset/changes, each number the mean +- 95% t-interval "
    "over its seeds (with the seed count).",
)
@click.option(
    "--wide",
    is_flag=True,
    help="Markdown/LaTeX: every protocol and metric, each with its n (CSV/JSON "
    "always have every column).",
)
@click.option(
    "--protocol",
    default=None,
    help="The protocol the brief view shows (default: the one with the most numbers).",
)
@click.option(
    "--columns",
    default=None,
    metavar="C1,C2,...",
    help="Only these columns (names as in --wide / CSV).",
)
@click.option("--all", "all_runs", is_flag=True, help="Also show runs still training.")
@click.option(
    "--sweep",
    "sweep_dir",
    default=None,
    metavar="DIR",
    help="Only the runs of this sweep (`bench sweep`), read from the results root it keeps them in.",
)
def compare(
    out,
    fmt,
    sort,
    ascending,
    filters,
    reference,
    ci,
    reliable_only,
    group,
    wide,
    protocol,
    columns,
    all_runs,
    sweep_dir,
):
    """Leaderboard of all runs: a row per run, a column per protocol/metric (accuracy in %).

    Markdown and LaTeX show a brief view: one protocol (named below the table; --protocol picks
    another), its headline numbers (the strongest attack a run has), n below the table when it is
    the same for every run. --wide and CSV/JSON give every column with its `<column> n`. A
    robustness number carries its reliability: `!` failed a guardrail check (`bench show RUN` says
    which), `?` stored before the checks existed (CSV/JSON: `<column> reliable`, yes/no/unchecked).

    \b
    Examples:
      bench compare
      bench compare --sort quick/pgd --filter dataset=shapes10
      bench compare --filter 'standard/autoattack>40' --columns standard/clean,standard/autoattack
      bench compare --format latex > table.tex
      bench compare --reference --filter dataset=cifar10
      bench compare --ci --reliable-only
      bench compare --group seeds
      bench compare --sweep results/sweeps/methods-x-seeds --group seeds
    """
    from bench.leaderboard.compare import compare as build

    runs = None
    if sweep_dir is not None:
        from bench.tools.sweep.submit import sweep_runs

        out, runs = sweep_runs(sweep_dir)
    click.echo(
        build(
            out,
            runs=runs,
            fmt=fmt,
            sort=sort,
            ascending=ascending,
            filters=tuple(filters),
            reference=reference,
            ci=ci,
            reliable_only=reliable_only,
            group=group,
            wide=wide,
            protocol=protocol,
            columns=columns,
            all_runs=all_runs,
        )
    )


COMMANDS = (compare,)
