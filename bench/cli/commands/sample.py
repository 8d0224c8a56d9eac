"""`bench sample RUN`: draw images from a trained run (any classifier is an energy model)."""

from __future__ import annotations

import click

from bench.cli.commands._common import CONTEXT


@click.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("-n", "--num", "n", type=int, default=64, show_default=True, help="Number of images.")
@click.option(
    "--class", "klass", default=None, metavar="K", help="Sample x|y for class K (index or name)."
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Sampler steps per chain [default: 100 from fresh starts, 0 from the saved buffer].",
)
@click.option(
    "--sampler",
    default=None,
    metavar="KIND",
    help="Sampler kind: sgld, pyld or a plugin's (bench list samplers) [default: the run's own; SGLD "
    "for runs without one].",
)
@click.option(
    "--buffer",
    type=click.Choice(["fresh", "saved"]),
    default="fresh",
    show_default=True,
    help="Start from fresh noise / class Gaussians, or from the run's saved replay buffer.",
)
@click.option(
    "--npz",
    "npz_out",
    default=None,
    metavar="FILE.npz",
    help="Also write the images (uint8 NHWC `x`, and `y` with --class) for FID.",
)
@click.option(
    "--grid",
    default=None,
    metavar="FILE.png",
    help="Grid PNG path [default: RUN/samples/sample-*.png].",
)
@click.option(
    "--out",
    "results",
    default="results",
    show_default=True,
    help="Results root that holds the run ids (as for every command).",
)
@click.option("--results", "results_old", default=None, hidden=True)
@click.option(
    "--checkpoint", "checkpoint_path", default=None, help="A specific checkpoint of the run."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: the run's."
)
@click.option(
    "--batch-size", type=int, default=256, show_default=True, help="Chains sampled at once."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def sample(
    run_ref,
    n,
    klass,
    steps,
    sampler,
    buffer,
    npz_out,
    grid,
    results,
    results_old,
    checkpoint_path,
    seed,
    device,
    batch_size,
    quiet,
):
    """Generate images from a trained run and write a PNG grid (and an npz for FID).

    \b
    Examples:
      bench sample 20261124-101500-jem-shapes10-1a2b3c -n 64
      bench sample results/runs/<run-id> --class 3 --steps 200
      bench sample <run-id> --buffer saved -n 10000 --npz buffer.npz
      bench sample <pgd-at-run-id> --sampler sgld --steps 100 --npz pgd-at-samples.npz
    """
    from bench.core.errors import BenchError

    if results.endswith(".npz"):
        raise BenchError(
            f"--out is the results folder, as in every command; write the samples with --npz {results}"
        )
    results = results_old or results  # --results: the earlier name of --out here
    from bench.run.saved_runs import sample_run

    s = sample_run(
        run_ref,
        n=n,
        klass=klass,
        steps=steps,
        sampler=sampler,
        buffer=buffer,
        npz_out=npz_out,
        grid=grid,
        results=results,
        checkpoint_path=checkpoint_path,
        seed=seed,
        device=device,
        batch_size=batch_size,
        show_progress=not quiet,
    )
    what = f"class {s['cls']}" if s["cls"] is not None else "unconditional"
    click.echo(
        f"{s['run_id']}: {s['n']} samples ({what}), {s['sampler']} {s['steps']} steps from {s['start']} starts; "
        f"mean energy {s['energy_start']:.4g} -> {s['energy_end']:.4g}"
    )
    click.echo(f"grid: {s['grid']}")
    if s["npz"]:
        click.echo(f"npz: {s['npz']}")


COMMANDS = (sample,)
