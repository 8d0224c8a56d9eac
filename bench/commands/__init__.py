"""Subcommands beyond run/list/compare/show: each module here registers its own on ``bench.cli.cli``
(``from bench.cli import cli`` then ``@cli.command()``), so adding a command touches no other file."""
