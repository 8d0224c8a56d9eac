"""The `bench` command line. Thin: the group and its error handling; the commands live in
``bench/cli/commands/`` (each module lists its commands in ``COMMANDS``) and call library functions."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from bench.cli import commands
from bench.cli.commands._common import CONTEXT
from bench.core.errors import BenchError

__all__ = ["CONTEXT", "cli", "main"]


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="trilemma-bench", prog_name="bench")
def cli():
    """trilemma-bench: train and compare classifiers on accuracy, robustness and generation.

    \b
    Examples:
      bench run --method pgd-at --preset cpu
      bench compare
      bench list methods
    """


def _add_commands(group: click.Group) -> None:
    """Add the ``COMMANDS`` of every public module of ``bench/cli/commands/`` to ``group``."""
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.cli.commands.{info.name}")
        for command in getattr(module, "COMMANDS", ()):
            group.add_command(command)


_add_commands(cli)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except BenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # bad flag or choice: one line naming the fix
        where = exc.ctx.command_path if exc.ctx else "bench"
        click.echo(f"error: {exc.format_message()} (see: {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
