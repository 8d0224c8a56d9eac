"""`bench doctor`: check this machine before a long run (library: :mod:`bench.tools.doctor`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bench.cli.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.option(
    "--method", "-m", "methods", multiple=True, help="Method(s) to check (default: all registered)."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--preset",
    "-p",
    default="smoke",
    show_default=True,
    help="Settings of the step checks (smoke: small models, quick on a CPU).",
)
@click.option(
    "--compile-mode",
    "compile_modes",
    multiple=True,
    type=click.Choice(["default", "reduce-overhead", "max-autotune"]),
    help="train.compile modes to compare with eager on CUDA (default: all three).",
)
@click.option(
    "--steps", type=int, default=3, show_default=True, help="Timed steps of each throughput line."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Settings for every config, as in bench run (e.g. data.data_dir=DIR).",
)
@click.option(
    "--json",
    "json_out",
    default=None,
    metavar="FILE",
    help="Also write the report as JSON, rewritten after every check ('-' for stdout at the end).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines, only the table.")
def doctor(methods, device, preset, compile_modes, steps, overrides, json_out, quiet):
    """Check this machine before a long run; exit status 1 if a check fails.

    Versions, device, precision flags and free memory; evaluation in fp32 and eval mode; per
    method, one step on the fast path against the plain fp32 path from the same weights (the
    documented tolerances), no host sync inside a step, the peak memory of a step at the paper
    settings, each compile mode against eager, a 1-rank process group reducing the logged
    values, and a throughput line with MFU. On a CPU the CUDA-only checks are skipped, with
    the reason.

    \b
    Examples:
      bench doctor
      bench doctor --method ce --method pgd-at --json doctor.json
      bench doctor --device cuda --compile-mode default -q
    """
    from bench.core.io import write_json
    from bench.tools.doctor.checks import Check, ChecksFailed, format_table
    from bench.tools.doctor.run import COMPILE_MODES, DoctorOptions, run_doctor

    opts = DoctorOptions(
        methods=tuple(methods),
        preset=preset,
        device=device,
        compile_modes=tuple(compile_modes) or COMPILE_MODES,
        overrides=tuple(overrides),
        steps=steps,
    )
    to_file = json_out not in (None, "-")
    report = run_doctor(
        opts,
        progress=None if quiet else (lambda line: click.echo(line, err=True)),
        on_update=(lambda partial: write_json(Path(json_out), partial)) if to_file else None,
    )
    checks = [Check(**c) for c in report["checks"]]
    click.echo(json.dumps(report, indent=2) if json_out == "-" else format_table(checks))
    if to_file:
        write_json(Path(json_out), report)
        click.echo(f"json: {json_out}")
    if bad := [c.label for c in checks if c.status == "fail"]:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ChecksFailed(
            f"{len(bad)} of {len(checks)} checks failed ({shown}); the detail column says why"
        )


COMMANDS = (doctor,)
