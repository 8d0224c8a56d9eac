"""`bench run`: train one method with the shared training core, then evaluate it."""

from __future__ import annotations

import os
import sys

import click

from bench.cli.commands._common import CONTEXT
from bench.core.errors import BenchError


@click.command(context_settings=CONTEXT)
@click.option("--method", "-m", help="Training method (see `bench list methods`).")
@click.option(
    "--dataset",
    "-d",
    default=None,
    help="shapes10 (default, embedded), cifar10, cifar100, npz:PATH or folder:PATH "
    "(train/ and val/ class folders; --set data.image_size=32|64).",
)
@click.option(
    "--arch",
    "-a",
    default=None,
    help="Architecture, e.g. resnet8, wrn-28-10 (see `bench list archs`).",
)
@click.option(
    "--preset",
    "-p",
    default=None,
    help="smoke, demo, cpu or paper (WRN-28-10, the references' settings; the default, on a GPU). "
    "See `bench list presets`.",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    help="YAML/JSON file of settings (sections data:, optim:, ...).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one setting, e.g. --set optim.lr=0.01 --set method.steps=7. Repeatable. With "
    "--resume only optim.lr, train.on_divergence, train.max_rollbacks, train.rollback_lr_factor, "
    "train.divergence_bound, train.checkpoint_every, train.keep_checkpoints, data.data_dir (--data-dir) and "
    "eval.* may change.",
)
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option(
    "--seeds",
    default=None,
    metavar="S1,S2,...",
    help="Train one run per seed, one after another (e.g. 0,1,2); `bench compare --group seeds` "
    "then shows mean +- 95% t-interval.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: auto."
)
@click.option("--data-dir", default=None, help="Folder holding the dataset files (default ./data).")
@click.option(
    "--on-divergence",
    type=click.Choice(["stop", "rollback"]),
    default=None,
    help="stop (keep the last good checkpoint) or roll back to it with a lower learning rate.",
)
@click.option(
    "--out",
    default="results",
    show_default=True,
    help="Results root; runs go to OUT/runs/<run-id>/.",
)
@click.option(
    "--resume", default=None, metavar="RUN", help="Continue an interrupted run (id or directory)."
)
@click.option(
    "--checkpoint",
    "checkpoint_path",
    default=None,
    help="With --resume: a specific checkpoint file.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved config (and where each value came from) and the planned steps; train nothing.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Data-parallel processes (GPUs) on this machine; launches torchrun. Beyond one node, "
    "call torchrun yourself: torchrun --nnodes ... -m bench run ...",
)
def run(
    method,
    dataset,
    arch,
    preset,
    config_file,
    overrides,
    seed,
    seeds,
    device,
    data_dir,
    on_divergence,
    out,
    resume,
    checkpoint_path,
    quiet,
    dry_run,
    nproc,
):
    """Train one method with the shared training core, then evaluate it.

    \b
    Examples:
      bench run --method ce --preset smoke
      bench run --method pgd-at --dataset shapes10 --preset cpu --seed 1
      bench run --method pgd-at --preset smoke --seeds 0,1,2
      bench run --method pgd-at --dataset npz:../shared/data/cifar10-train-5k.npz --preset cpu
      bench run --method ebjdat --dataset cifar10 --data-dir ~/data
      bench run --resume 20261124-101500-pgd-at-shapes10-1a2b3c
      bench run --resume 20261124-101500-jem++-cifar10-9f8e7d --set optim.lr=0.01 --on-divergence rollback
    """
    from bench.run.runner import resume_run, start_run

    if seeds is not None and nproc > 1:
        raise BenchError(
            "--seeds runs the seeds one after another in one process; with --nproc launch one "
            "bench run --seed S per seed instead"
        )
    if nproc > 1:
        from bench.train.distributed import check_processes_fit, launched_by_torchrun

        if not launched_by_torchrun():
            import torch

            # one line here rather than one failure per launched process: a CUDA run needs a GPU per process
            check_processes_fit(
                nproc,
                _launch_device(device, overrides, config_file, resume, out),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )
            sys.exit(_relaunch_with_torchrun(nproc))
    if resume and dry_run:
        raise BenchError(
            "--dry-run shows a new run's plan; drop it with --resume (bench show RUN shows a run)"
        )
    if resume:
        flags = {"--method": method, "--dataset": dataset, "--arch": arch, "--preset": preset}
        flags.update({"--config": config_file, "--seed": seed, "--seeds": seeds})
        given = [name for name, value in flags.items() if value is not None]
        if given:
            raise BenchError(
                f"--resume continues a run with its saved config; drop {', '.join(given)} (on resume "
                "--set may change only the learning rate, divergence, checkpoint and eval settings)"
            )
        extra = (
            list(overrides)
            + ([f"train.on_divergence={on_divergence}"] if on_divergence else [])
            + ([f"data.data_dir={data_dir}"] if data_dir else [])
        )
        result = resume_run(
            resume,
            out=out,
            device=device,
            show_progress=not quiet,
            checkpoint_path=checkpoint_path,
            announce=_announce,
            overrides=extra,
        )
    else:
        if not method:
            raise BenchError(
                "missing --method; choose one with `bench list methods`, e.g. bench run --method ce"
            )
        if checkpoint_path:
            raise BenchError("--checkpoint only goes with --resume RUN")
        from bench.run.resolve import resolve

        explicit_preset, preset = preset, preset or "paper"

        extra = list(overrides)
        if data_dir:
            extra.append(f"data.data_dir={data_dir}")
        if on_divergence:
            extra.append(f"train.on_divergence={on_divergence}")
        if seeds is not None and seed is not None:
            raise BenchError("give either --seed or --seeds, not both")
        from bench.core.config import parse_seeds

        seed_list = parse_seeds(seeds) if seeds is not None else [seed]
        # every run is resolved (and checked) before the first one starts
        runs = [
            resolve(
                method,
                preset=preset,
                dataset=dataset,
                arch=arch,
                seed=s,
                device=device,
                config_file=config_file,
                overrides=extra,
            )
            for s in seed_list
        ]
        cfg = runs[0].config
        if dry_run:
            from bench.run.dry_run import describe

            for line in describe(runs[0]):
                click.echo(line)
            return
        if preset == "paper" and (device or "auto") != "cuda":
            import torch

            if not torch.cuda.is_available():
                if explicit_preset is None:
                    raise BenchError(
                        f"the default preset 'paper' trains {cfg.model.arch} for {cfg.train.epochs:g} "
                        "epochs, GPU-days; on this machine without a GPU choose --preset cpu (minutes) "
                        "or --preset smoke, or pass --preset paper to run it anyway"
                    )
                click.echo(
                    f"note: preset 'paper' trains {cfg.model.arch} for {cfg.train.epochs:g} epochs; "
                    "on a CPU use --preset cpu or --preset smoke",
                    err=True,
                )
        for one in runs[:-1]:
            _report(start_run(one, out=out, show_progress=not quiet, announce=_announce))
        result = start_run(runs[-1], out=out, show_progress=not quiet, announce=_announce)
    _report(result)


def _report(result) -> None:
    from bench.leaderboard.summary import run_summary_lines

    if os.environ.get("RANK", "0") == "0":
        # the headline accuracies; `bench show` prints everything
        for line in run_summary_lines(result.record):
            click.echo(line)
        click.echo(f"record: {result.run_dir / 'record.json'}")


def _announce(line: str) -> None:
    click.echo(line, err=True)


def _launch_device(device, overrides, config_file, resume, out) -> str:
    """The device setting the launched processes will train on: --device, else the resumed run's,
    else the last --set device=..., else the --config file's, else auto (no preset sets one)."""
    if device:
        return device
    if resume:
        from bench.core.record_reading import run_config
        from bench.core.records import RunRecord
        from bench.core.run_dirs import resolve_run

        return run_config(RunRecord.load(resolve_run(resume, out)).data).device
    from bench.core.config import parse_set

    for item in reversed(overrides):
        if "device" in parse_set(item):
            return str(parse_set(item)["device"])
    if config_file:
        from bench.run.layers import load_config_file

        return str(load_config_file(config_file).get("device", "auto"))
    return "auto"


def _relaunch_with_torchrun(nproc: int) -> int:
    """Run this same command under torchrun with ``nproc`` processes; returns its exit code."""
    import subprocess

    argv = sys.argv[1:]
    nproc_at = {i for i, a in enumerate(argv) if a == "--nproc"}  # and its value after it
    args = [
        a for i, a in enumerate(argv) if not ({i, i - 1} & nproc_at or a.startswith("--nproc="))
    ]
    torchrun = ["--standalone", f"--nproc-per-node={nproc}", "-m", "bench"]
    click.echo(f"launching {nproc} processes: torchrun {' '.join(torchrun + args)}", err=True)
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", *torchrun, *args])


COMMANDS = (run,)
