"""`bench perf`: training throughput per method (fast vs plain path), phases, FE and MFU; sampler,
FID-feature and AutoAttack throughput."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bench.cli.commands._common import CONTEXT
from bench.core.errors import BenchError


@click.command(context_settings=CONTEXT)
@click.option(
    "--method", "-m", "methods", multiple=True, help="Method(s) to time (default: all registered)."
)
@click.option(
    "--preset",
    "-p",
    default="smoke",
    show_default=True,
    help="Preset giving model, batch size, method settings.",
)
@click.option(
    "--arch",
    "-a",
    default=None,
    help="Override the preset's architecture (e.g. wrn-28-10 on a GPU).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--steps", type=int, default=10, show_default=True, help="Timed steps per method and variant."
)
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed steps first.")
@click.option(
    "--peak-tflops",
    type=float,
    default=None,
    help="One peak for every MFU (default: each step's own precision's peak, bf16/TF32/fp32 on CUDA, "
    "fp32 on CPU, measured with a large matmul).",
)
@click.option("--no-plain", is_flag=True, help="Skip the plain eager fp32 baseline.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra settings, as in bench run.",
)
@click.option(
    "--fid-images",
    type=int,
    default=None,
    help="Images for the FID feature-extraction timing (0: skip; default 4096 on CUDA, 64 on CPU).",
)
@click.option(
    "--aa-run",
    "aa_runs",
    multiple=True,
    metavar="RUN",
    help="Time AutoAttack on this trained run (repeatable; give a robust and a non-robust one).",
)
@click.option(
    "--aa-n",
    "aa_examples",
    type=int,
    default=100,
    show_default=True,
    help="Test images for AutoAttack.",
)
@click.option(
    "--aa-version",
    default="standard",
    show_default=True,
    help="AutoAttack version (standard, rand, plus).",
)
@click.option(
    "--out",
    default="results",
    show_default=True,
    help="Results root where --aa-run ids are looked up.",
)
@click.option(
    "--json",
    "json_out",
    default=None,
    metavar="FILE",
    help="Also write the report as JSON ('-' for stdout).",
)
def perf(
    methods,
    steps,
    warmup,
    peak_tflops,
    no_plain,
    fid_images,
    aa_runs,
    aa_examples,
    json_out,
    **opts,
):
    """Time the real training step of each method and compare it with the plain fp32 loop.

    \b
    Examples:
      bench perf --preset smoke
      bench perf --method ebjdat --method pgd-at --steps 20
      bench perf --preset paper --arch wrn-28-10 --device cuda --json perf.json
      bench perf --method ce --aa-run <ce run> --aa-run <pgd-at run> --aa-n 200
    """
    from bench.tools.perf import run_perf
    from bench.tools.perf_table import format_report
    from methods import METHODS

    if steps < 1 or warmup < 0:
        raise BenchError("--steps must be >= 1 and --warmup >= 0")
    if peak_tflops is not None and peak_tflops <= 0:
        raise BenchError("--peak-tflops must be > 0 (or leave it out to measure the peaks)")
    if fid_images is None:
        from bench.core.device import resolve_device

        fid_images = 4096 if resolve_device(opts["device"]).type == "cuda" else 64
    if fid_images < 0 or aa_examples < 1:
        raise BenchError("--fid-images must be >= 0 and --aa-n >= 1")
    from bench.core.run_dirs import resolve_run

    for r in aa_runs:
        resolve_run(r, opts["out"])  # a wrong run id fails before any timing
    names = list(methods) or METHODS.names()
    for m in names:
        METHODS.get(m)  # unknown names fail here with the list of valid ones
    from bench.core.io import write_json

    # a JSON file is rewritten after each method ("complete": false until the end), so a run stopped
    # by a time limit (scripts/gpu-check.sh) keeps the methods it timed
    to_file = json_out not in (None, "-")
    report = run_perf(
        names,
        steps=steps,
        warmup=warmup,
        peak_tflops=peak_tflops,
        variants=("fast",) if no_plain else ("fast", "plain"),
        fid_images=fid_images,
        aa_runs=aa_runs,
        aa_examples=aa_examples,
        on_progress=(lambda partial: write_json(Path(json_out), partial)) if to_file else None,
        **opts,
    )
    if json_out == "-":
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_report(report))
    if to_file:
        write_json(Path(json_out), report)
        click.echo(f"json: {json_out}")


COMMANDS = (perf,)
