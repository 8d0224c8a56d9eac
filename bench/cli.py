"""The `bench` command line. Thin: it parses, builds a config and calls library functions."""

from __future__ import annotations

import json
import os
import sys

import click

from bench.errors import BenchError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


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


# -- run ------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.option("--method", "-m", help="Training method (see `bench list methods`).")
@click.option("--dataset", "-d", default=None, help="shapes10 (default, embedded), cifar10, cifar100 or npz:PATH.")
@click.option("--arch", "-a", default=None, help="Architecture, e.g. resnet8, wrn-28-10 (see `bench list archs`).")
@click.option("--preset", "-p", default="paper", show_default=True,
              help="smoke (seconds), cpu (minutes), paper (WRN-28-10, reference settings).")
@click.option("--config", "config_file", default=None, help="YAML/JSON file of settings (sections data:, optim:, ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one setting, e.g. --set optim.lr=0.01 --set method.steps=7. Repeatable.")
@click.option("--seed", type=int, default=None, help="Random seed (default 0).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: auto.")
@click.option("--data-dir", default=None, help="Folder holding the dataset files (default ./data).")
@click.option("--on-divergence", type=click.Choice(["stop", "rollback"]), default=None,
              help="stop (keep the last good checkpoint) or roll back to it with a lower learning rate.")
@click.option("--out", default="results", show_default=True, help="Results root; runs go to OUT/runs/<run-id>/.")
@click.option("--resume", default=None, metavar="RUN", help="Continue an interrupted run (id or directory).")
@click.option("--checkpoint", "checkpoint_path", default=None, help="With --resume: a specific checkpoint file.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes (GPUs) on this machine; launches torchrun. Beyond one node, "
                   "call torchrun yourself: torchrun --nnodes ... -m bench run ...")
def run(method, dataset, arch, preset, config_file, overrides, seed, device, data_dir, on_divergence, out, resume,
        checkpoint_path, quiet, nproc):
    """Train one method with the shared training core, then evaluate it.

    \b
    Examples:
      bench run --method ce --preset smoke
      bench run --method pgd-at --dataset shapes10 --preset cpu --seed 1
      bench run --method pgd-at --dataset npz:../shared/data/cifar10-train-5k.npz --preset cpu
      bench run --method ebjdat --dataset cifar10 --data-dir ~/data
      bench run --resume 20261124-101500-pgd-at-shapes10-1a2b3c
    """
    from bench.runner import resume_run, start_run

    if nproc > 1:
        from bench.distributed import launched_by_torchrun

        if not launched_by_torchrun():
            sys.exit(_relaunch_with_torchrun(nproc))
    if resume:
        given = [n for n, v in (("--method", method), ("--dataset", dataset), ("--arch", arch),
                                ("--config", config_file), ("--set", overrides), ("--seed", seed)) if v]
        if given:
            raise BenchError(f"--resume continues a run with its saved config; drop {', '.join(given)}")
        result = resume_run(resume, out=out, device=device, show_progress=not quiet, checkpoint_path=checkpoint_path,
                            announce=_announce)
    else:
        if not method:
            raise BenchError("missing --method; choose one with `bench list methods`, e.g. bench run --method ce")
        if checkpoint_path:
            raise BenchError("--checkpoint only goes with --resume RUN")
        from bench.config import resolve_config

        extra = list(overrides)
        if data_dir:
            extra.append(f"data.data_dir={data_dir}")
        if on_divergence:
            extra.append(f"train.on_divergence={on_divergence}")
        cfg = resolve_config(method, preset=preset, dataset=dataset, arch=arch, seed=seed, device=device,
                             config_file=config_file, overrides=extra)
        if preset == "paper" and (device or "auto") != "cuda":
            import torch

            if not torch.cuda.is_available():
                click.echo(f"note: preset 'paper' trains {cfg.model.arch} for {cfg.train.epochs:g} epochs; "
                           "on a CPU use --preset cpu or --preset smoke", err=True)
        result = start_run(cfg, out=out, show_progress=not quiet, announce=_announce)
    if os.environ.get("RANK", "0") == "0":
        _print_summary(result.record)
        click.echo(f"record: {result.run_dir / 'record.json'}")


def _announce(line: str) -> None:
    click.echo(line, err=True)


def _relaunch_with_torchrun(nproc: int) -> int:
    """Run this same command under torchrun with ``nproc`` processes; returns its exit code."""
    import subprocess

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "bench", *args]
    click.echo(f"launching {nproc} processes: torchrun --standalone --nproc-per-node={nproc} -m bench "
               + " ".join(args), err=True)
    return subprocess.call(cmd)


def _print_summary(record: dict) -> None:
    for protocol, metrics in (record.get("evaluations") or {}).items():
        parts = []
        for name, res in metrics.items():  # the headline accuracies; `bench show` prints everything
            if name in ("clean", "pgd", "autoattack") and isinstance(res, dict) and "accuracy" in res:
                parts.append(f"{name} {100 * res['accuracy']:.2f}% (n={res.get('n_examples')})")
        if parts:
            click.echo(f"{record['run_id']} [{protocol}]: " + ", ".join(parts))


# -- list -----------------------------------------------------------------------------------
LISTABLE = ("methods", "datasets", "archs", "presets", "metrics", "protocols")


@cli.command("list", context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(LISTABLE))
def list_(kind):
    """List registered methods, datasets, architectures, presets, metrics or protocols.

    \b
    Examples:
      bench list methods
      bench list presets
    """
    if kind == "methods":
        from methods import METHODS

        names = METHODS.names()
        width = max([len(n) for n in [*names, *METHODS.load_errors]] or [0])
        for name in names:
            cls = METHODS.get(name)
            click.echo(f"{name:{width}s}  {getattr(cls, 'reference', '') or ''}")
        for name, err in METHODS.load_errors.items():
            click.echo(f"{name:{width}s}  (failed to load: {err})")
    elif kind == "datasets":
        from bench.data import DATASETS

        click.echo("\n".join(DATASETS.names()))
    elif kind == "archs":
        from bench.models import ARCHS

        click.echo("\n".join(ARCHS.names()))
    elif kind == "presets":
        from bench.config import load_preset, preset_names

        for name in preset_names():
            click.echo(f"{name:8s} {load_preset(name).get('description', '')}")
    elif kind == "metrics":
        from metrics import METRICS

        click.echo("\n".join(METRICS.names()))
    elif kind == "protocols":
        from metrics import PROTOCOLS

        for name, p in sorted(PROTOCOLS.items()):
            click.echo(f"{name:10s} {p.description}")


# -- compare --------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.option("--out", default="results", show_default=True, help="Results root to read runs from.")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "json"]), default="md", show_default=True)
@click.option("--sort", default=None, metavar="COL", help="Sort by a column, e.g. quick/pgd (descending).")
@click.option("--ascending", is_flag=True, help="Sort ascending instead.")
@click.option("--filter", "filters", multiple=True, metavar="COL=VALUE",
              help="Keep rows where COL equals (or with !=, differs from) VALUE. Repeatable.")
@click.option("--reference", is_flag=True,
              help="Add published reference rows (EB-JDAT paper, RobustBench), marked kind=reported, after the measured ones.")
def compare(out, fmt, sort, ascending, filters, reference):
    """Leaderboard of all runs: a row per run, a column per protocol/metric (accuracy in %).

    \b
    Examples:
      bench compare
      bench compare --sort quick/pgd --filter dataset=shapes10
      bench compare --format latex > table.tex
      bench compare --reference --filter dataset=cifar10
    """
    from bench.compare import compare as build

    click.echo(build(out, fmt=fmt, sort=sort, ascending=ascending, filters=tuple(filters), reference=reference))


# -- show -----------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--out", default="results", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw record.")
def show(run_ref, out, as_json):
    """Print a run's record as a readable summary.

    \b
    Examples:
      bench show 20261124-101500-pgd-at-shapes10-1a2b3c
      bench show results/runs/<run-id> --json
    """
    from pathlib import Path

    from bench.records import load_record, resolve_run

    run_dir = resolve_run(run_ref, out)
    rec = load_record(run_dir)
    if as_json:
        click.echo(json.dumps(rec, indent=2))
        return
    env = rec.get("environment", {})
    tr = rec.get("training", {})
    lines = [
        f"run       {rec['run_id']}  ({rec.get('status')})",
        f"method    {rec.get('method')}  dataset {rec.get('dataset')}  arch {rec.get('arch')}  "
        f"preset {rec.get('preset')}  seed {rec.get('seed')}",
        f"training  {tr.get('steps_done', 0)}/{tr.get('total_steps', '?')} steps "
        f"({tr.get('epochs_done', 0)} epochs), {rec.get('timings', {}).get('train_seconds', 0):.1f} s, "
        f"{len(tr.get('rollbacks', []))} rollbacks, {len(tr.get('resumes', []))} resumes",
        f"git       {env.get('git', {}).get('revision')}{' (dirty)' if env.get('git', {}).get('dirty') else ''}",
        f"device    {env.get('device', {}).get('type')} {env.get('device', {}).get('name', '')}",
        f"torch     {env.get('packages', {}).get('torch')}",
    ]
    hist = [h for h in tr.get("history", []) if "loss" in h]
    if hist:
        last = hist[-1]
        terms = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("step", "epoch", "lr", "images_per_s"))
        lines.append(f"last log  step {last['step']}: {terms}")
    for v in tr.get("validation", [])[-1:]:
        lines.append(f"last val  {v['split']} accuracy {100 * v['accuracy']:.2f}% (n={v['n_examples']})")
    try:
        from bench.commands.eval import format_result
    except ImportError:  # pragma: no cover
        format_result = None
    for protocol, metrics in rec.get("evaluations", {}).items():
        lines.append(f"eval [{protocol}]")
        for name, res in metrics.items():
            if not isinstance(res, dict):
                continue
            text = None
            if format_result is not None:
                try:
                    text = format_result(name, res)
                except (KeyError, TypeError, ValueError):
                    text = None
            if text is None:
                text = ", ".join(f"{k} {v:.4g}" for k, v in res.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds")
            when = f"  [{res['evaluated_at']}]" if res.get("evaluated_at") else ""
            lines.append(f"  {name:11s} {text}{when}")
            if res.get("note"):
                lines.append(f"  {'':11s} note: {res['note']}")
    if rec.get("message"):
        lines.append(f"message   {rec['message']}")
    arts = rec.get("artifacts", {})
    figures = {k: v for k, v in arts.items() if isinstance(v, str) and v.lower().endswith((".png", ".pdf", ".svg"))}
    for name, path in arts.items():
        if name in figures:
            continue
        lines.append(f"artifact  {name}: {path}")
    if figures:
        lines.append("figures   (energy histograms, reliability diagrams, sample grids)")
        for name, path in sorted(figures.items()):
            p = Path(path) if Path(path).is_absolute() else (run_dir / path)
            mark = "" if p.is_file() else "  (missing)"
            lines.append(f"  {name:34s} {p.resolve().as_uri() if p.is_file() else p}{mark}")
    click.echo("\n".join(lines))


def _load_commands() -> None:
    """Each module in ``bench/commands/`` adds its own subcommands to ``cli``."""
    import importlib
    import pkgutil

    import bench.commands

    for info in pkgutil.iter_modules(bench.commands.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"bench.commands.{info.name}")


_load_commands()


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
