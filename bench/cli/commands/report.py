"""`bench report`: the trilemma as one HTML page with its figures."""

from __future__ import annotations

import click

from bench.cli.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option("--out", default="results", show_default=True, help="Results root to read runs from.")
@click.option(
    "--html",
    default=None,
    metavar="FILE.html",
    help="Where to write the page (default OUT/report/index.html); figures go to figures/ beside it.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="COL=VALUE",
    help="Only the runs bench compare --filter keeps (e.g. method=ebjdat, 'standard/autoattack>40'). "
    "Repeatable.",
)
@click.option(
    "--protocol",
    default=None,
    help="Only this protocol (default: every protocol with numbers, one panel each).",
)
@click.option("--no-reference", is_flag=True, help="Leave out the published reference rows.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the page's path.")
def report(out, html, filters, protocol, no_reference, quiet):
    """Write one self-contained HTML page: the trade-off plane per protocol, energy panels, sample
    grids, training curves and the leaderboard, with PNG/SVG figures beside it.

    \b
    Examples:
      bench report
      bench report --filter dataset=shapes10 --protocol standard --html trilemma.html
    """
    from bench.leaderboard.report import build_report

    rep = build_report(
        out,
        html=html,
        filters=tuple(filters),
        protocol=protocol,
        reference=not no_reference,
        announce=None if quiet else (lambda line: click.echo(line, err=True)),
    )
    for note in () if quiet else rep.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(str(rep.html))


COMMANDS = (report,)
