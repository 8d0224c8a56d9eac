"""The subcommands of `bench`, one module per command group.

Each public module here (name not starting with ``_``) defines its commands with
``@click.command(...)`` and lists them in a module-level tuple ``COMMANDS``; ``bench/cli/__init__.py``
imports every such module and adds each entry of its ``COMMANDS`` to the ``bench`` group. A
command module never imports ``bench.cli``: it only parses arguments and calls library functions
(``bench.*``, ``metrics.*``). Adding a command is one new module here; it touches no other file.
Shared bits (the context settings) live in ``_common.py``.
"""
