"""`bench list KIND`: the registered methods, datasets, architectures, presets, metrics, protocols
or samplers (the listing itself is :func:`bench.run.listing.list_lines`)."""

from __future__ import annotations

import click

from bench.cli.commands._common import CONTEXT
from bench.run.listing import KINDS


@click.command("list", context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(list(KINDS)))
def list_(kind):
    """List registered methods, datasets, architectures, presets, metrics, protocols or samplers.

    \b
    Examples:
      bench list methods
      bench list presets
    """
    from bench.run.listing import list_lines

    for line in list_lines(kind):
        click.echo(line)


COMMANDS = (list_,)
