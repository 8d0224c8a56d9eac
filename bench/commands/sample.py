"""`bench sample RUN`: draw images from a trained run (any classifier is an energy model)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli import CONTEXT, cli
from bench.errors import BenchError

GRID_MAX = 256  # images shown in the PNG grid (the npz holds all of them)


def _parse_class(value: str | None, classes: list[str]) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < len(classes):
            raise BenchError(f"--class {k} is out of range; this run's dataset has classes 0..{len(classes) - 1}")
        return k
    if value in classes:
        return classes.index(value)
    raise BenchError(f"--class {value!r} is neither a class index nor a class name ({', '.join(classes[:10])}"
                     f"{', ...' if len(classes) > 10 else ''})")


def sample_run(run_ref: str, *, n: int = 64, klass: str | None = None, steps: int | None = None,
               sampler: str | None = None, buffer: str = "fresh", npz_out: str | None = None,
               grid: str | None = None, results: str = "results", checkpoint_path: str | None = None,
               seed: int = 0, device: str | None = None, batch_size: int = 256) -> dict:
    """Library entry point of `bench sample`; returns what it wrote and the energy statistics."""
    import torch

    from bench import checkpoint
    from bench.records import resolve_run
    from bench.runner import load_run_model, resolve_device
    from bench.sampling.generate import make_sample_fn
    from bench.sampling.images import save_grid, save_npz

    if n < 1:
        raise BenchError(f"-n must be a positive number of images, got {n}")
    if steps is not None and steps < 0:
        raise BenchError(f"--steps must be >= 0, got {steps}")
    if batch_size < 1:
        raise BenchError(f"--batch-size must be positive, got {batch_size}")
    if npz_out is not None and not npz_out.endswith(".npz"):
        raise BenchError(f"--out {npz_out!r} must name an .npz file, e.g. --out samples.npz")
    if buffer not in ("fresh", "saved"):
        raise BenchError(f"--buffer {buffer!r} is not valid; choose fresh or saved")
    run_dir = resolve_run(run_ref, results)
    dev = resolve_device(device) if device else None
    model, cfg, data, record = load_run_model(run_dir, dev, checkpoint_path)
    dev = next(model.parameters()).device
    k = _parse_class(klass, data.classes)
    buffer_state = None
    if buffer == "saved":
        ckpt = checkpoint.load(Path(checkpoint_path) if checkpoint_path else run_dir / "checkpoints" / "last.pt")
        buffer_state = ((ckpt.get("method") or {}).get("sampler") or {}).get("buffer")
        if buffer_state is None:
            raise BenchError(f"run {record['run_id']} ({record['method']}) saved no replay buffer; use --buffer fresh")
    torch.manual_seed(seed)
    fn = make_sample_fn(model, cfg, dev, steps=steps, sampler=sampler, buffer_state=buffer_state, data=data,
                        batch_size=batch_size)
    x = fn(n, y=k)
    stats = dict(fn.stats)
    tag = f"{buffer}-{fn.sampler.kind}-{fn.steps}steps" + (f"-class{k}" if k is not None else "") + f"-seed{seed}"
    grid_path = Path(grid) if grid else run_dir / "samples" / f"sample-{tag}.png"
    if grid_path.suffix.lower() != ".png":
        raise BenchError(f"--grid {str(grid_path)!r} must name a .png file")
    try:
        save_grid(x[:GRID_MAX], grid_path)
        if npz_out is not None:
            y = torch.full((n,), k, dtype=torch.long) if k is not None else None
            save_npz(npz_out, x, y, run_id=record["run_id"], sampler=fn.sampler.kind, steps=fn.steps, start=buffer)
    except OSError as exc:
        raise BenchError(f"cannot write the samples ({exc.strerror}: {exc.filename}); pass writable --grid/--out paths")
    stats.update(grid=str(grid_path), npz=npz_out, run_id=record["run_id"], cls=k, start=buffer)
    return stats


@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("-n", "--num", "n", type=int, default=64, show_default=True, help="Number of images.")
@click.option("--class", "klass", default=None, metavar="K", help="Sample x|y for class K (index or name).")
@click.option("--steps", type=int, default=None,
              help="Sampler steps per chain [default: 100 from fresh starts, 0 from the saved buffer].")
@click.option("--sampler", type=click.Choice(["sgld", "pyld"]), default=None,
              help="Sampler [default: the run's own; SGLD for runs without one].")
@click.option("--buffer", type=click.Choice(["fresh", "saved"]), default="fresh", show_default=True,
              help="Start from fresh noise / class Gaussians, or from the run's saved replay buffer.")
@click.option("--out", "npz_out", default=None, metavar="FILE.npz",
              help="Also write the images (uint8 NHWC `x`, and `y` with --class) for FID.")
@click.option("--grid", default=None, metavar="FILE.png", help="Grid PNG path [default: RUN/samples/sample-*.png].")
@click.option("--results", default="results", show_default=True, help="Results root that holds the run ids.")
@click.option("--checkpoint", "checkpoint_path", default=None, help="A specific checkpoint of the run.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: the run's.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Chains sampled at once.")
def sample(run_ref, n, klass, steps, sampler, buffer, npz_out, grid, results, checkpoint_path, seed, device,
           batch_size):
    """Generate images from a trained run and write a PNG grid (and an npz for FID).

    \b
    Examples:
      bench sample 20261124-101500-jem-shapes10-1a2b3c -n 64
      bench sample results/runs/<run-id> --class 3 --steps 200
      bench sample <run-id> --buffer saved -n 10000 --out buffer.npz
      bench sample <pgd-at-run-id> --sampler sgld --steps 100 --out pgd-at-samples.npz
    """
    s = sample_run(run_ref, n=n, klass=klass, steps=steps, sampler=sampler, buffer=buffer, npz_out=npz_out, grid=grid,
                   results=results, checkpoint_path=checkpoint_path, seed=seed, device=device, batch_size=batch_size)
    what = f"class {s['cls']}" if s["cls"] is not None else "unconditional"
    click.echo(f"{s['run_id']}: {s['n']} samples ({what}), {s['sampler']} {s['steps']} steps from {s['start']} starts; "
               f"mean energy {s['energy_start']:.4g} -> {s['energy_end']:.4g}")
    click.echo(f"grid: {s['grid']}")
    if s["npz"]:
        click.echo(f"npz: {s['npz']}")
