"""`bench eval RUN`: evaluate a saved run with a protocol and merge the results into its record.

Nothing is written to the record until a metric has produced its result: every check that can
fail early (unknown metric or protocol, missing samples, missing Inception weights) runs before
any evaluation, and a metric that fails leaves its earlier entry untouched (results of the
metrics that finished before it are kept). An interrupted AutoAttack keeps its state in the run
directory and resumes when the same command is run again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from bench.cli import CONTEXT, cli
from bench.errors import BenchError, InterruptedRun


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """``METRIC.KEY=VALUE`` items -> ``{metric: {key: value}}`` (values parsed as JSON when they are JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        metric, dot, name = key.strip().partition(".")
        if not sep or not dot or not metric or not name:
            raise BenchError(f"--set {item!r}: write METRIC.KEY=VALUE, e.g. --set autoattack.n_examples=200")
        try:
            value = json.loads(raw)
        except ValueError:
            value = [v for v in raw.split(",")] if "," in raw else raw
        out.setdefault(metric, {})[name] = value
    return out


def merge_results(run_dir: Path, protocol: str, results: dict[str, dict[str, Any]]) -> dict:
    """Re-read the record, add ``results`` under ``evaluations[protocol]`` and their artifacts; save atomically."""
    from bench.records import load_record, save_record

    record = load_record(run_dir)
    record.setdefault("evaluations", {}).setdefault(protocol, {}).update(results)
    arts = record.setdefault("artifacts", {})
    for metric, res in results.items():
        for name, rel in (res.get("artifacts") or {}).items():
            arts[f"{protocol}/{metric}/{name}"] = rel
    t = record.setdefault("timings", {})
    t["eval_seconds"] = round(t.get("eval_seconds", 0) + sum(r.get("seconds", 0) for r in results.values()), 3)
    save_record(run_dir, record)
    return record


def evaluate_saved_run(run_dir: Path, protocol: str = "standard", metrics: list[str] | None = None,
                       n_examples: int | None = None, samples: str | None = None, weights: str | None = None,
                       checkpoint: str | None = None, device: str | None = None, batch_size: int | None = None,
                       overrides: dict | None = None, show_progress: bool = True, echo=None):
    """Library entry point of `bench eval`: returns (results, skipped, record)."""
    from bench.runner import load_run_model, resolve_device
    from metrics import EvalContext, evaluate
    from metrics.protocols import get_protocol, preflight

    echo = echo or (lambda s: None)
    proto = get_protocol(protocol)
    if metrics:
        from metrics import METRICS

        for m in metrics:
            METRICS.get(m)  # unknown names fail here, with the list of known ones
    dev = resolve_device(device) if device else None
    model, cfg, data, record = load_run_model(run_dir, dev, checkpoint)
    dev = next(model.parameters()).device
    extra: dict[str, Any] = {"cfg": cfg, "run_dir": str(run_dir), "samples": samples, "weights": weights}
    buffer_state = _buffer_state(run_dir, checkpoint)
    if buffer_state is not None:
        extra["buffer_state"] = buffer_state
    ctx = EvalContext(device=dev, batch_size=batch_size or cfg.eval.batch_size, seed=cfg.seed, out_dir=Path(run_dir),
                      show_progress=show_progress, extra=extra)
    n = n_examples if n_examples is not None else cfg.eval.n_examples
    names, skipped = preflight(protocol, metrics, ctx, n, overrides)  # fails before anything runs
    for name, why in skipped.items():
        echo(f"skipped {name}: {why}")
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in names:
            echo(f"[{proto.name}] {name} ...")
            results.update(evaluate(model, data, protocol, n, ctx, [name], overrides))
    except KeyboardInterrupt:
        if results:
            merge_results(run_dir, protocol, results)
        hint = (f"; AutoAttack keeps its state under {Path(run_dir) / 'autoattack'}/ and resumes"
                if "autoattack" in names and "autoattack" not in results else "")
        raise InterruptedRun(f"evaluation interrupted{' (finished metrics saved)' if results else ''}; "
                             f"run the same command again to continue{hint}")
    except BaseException:
        if results:
            merge_results(run_dir, protocol, results)
        raise
    record = merge_results(run_dir, protocol, results) if results else record
    return results, skipped, record


def _buffer_state(run_dir: Path, checkpoint: str | None):
    """The replay buffer saved with a JEM-family run's checkpoint (None for other runs)."""
    import torch

    path = Path(checkpoint) if checkpoint else Path(run_dir) / "checkpoints" / "last.pt"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        buf = ((ckpt.get("method") or {}).get("sampler") or {}).get("buffer")
        return buf if isinstance(buf, dict) and "x" in buf else None
    except Exception:
        return None


def format_result(metric: str, res: dict[str, Any]) -> str:
    n = res.get("n_examples")
    if metric in ("clean", "pgd", "autoattack") and res.get("accuracy") is not None:
        s = f"accuracy {100 * res['accuracy']:.2f}%"
        if metric == "autoattack" and res.get("per_attack"):
            s += " (" + ", ".join(f"{a} {100 * v:.2f}%" for a, v in res["per_attack"].items()) + ")"
        return f"{s}  n={n}"
    if metric == "energy":
        parts = [f"E clean {res['mean_clean']:.3f}", f"adv {res['mean_adv']:.3f}", f"gap_adv {res['gap_adv']:.3f}",
                 f"W1 {res['w1_adv']:.3f}"]
        if res.get("gap_gen") is not None:
            parts += [f"gen {res['mean_gen']:.3f}", f"gap_gen {res['gap_gen']:.3f}", f"W1 {res['w1_gen']:.3f}"]
        return ", ".join(parts) + f"  n={n} (gen {res.get('n_generated', 0)})"
    if metric == "calibration":
        return f"ECE {100 * res['ece']:.2f}% ({res['bins']} bins), NLL {res['nll']:.3f}  n={n}"
    if metric == "fid":
        return f"FID {res['fid']:.3f}  n={res['n_samples']} vs {res['n_real']} {res['real_split']}, " \
               f"weights sha256 {str(res.get('weights_sha256'))[:12]}"
    if metric == "kid":
        return f"KID {res['kid_mean']:.5f} +- {res['kid_std']:.5f}  n={res['n_samples']}"
    if metric == "is":
        if res.get("is_mean") is None:
            return "IS n/a (weights without the 1008-way fc layer)"
        return f"IS {res['is_mean']:.3f} +- {res['is_std']:.3f}  n={res['n_samples']}"
    nums = ", ".join(f"{k} {v:.4g}" for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                     and k not in ("seconds",))
    return nums


@cli.command("eval", context_settings=CONTEXT)
@click.argument("run_ref", metavar="RUN")
@click.option("--protocol", "-p", default="standard", show_default=True,
              help="quick, standard (RobustBench style) or paper (the EB-JDAT authors' settings); see `bench list protocols`.")
@click.option("--metrics", "metrics_", default=None, metavar="M1,M2",
              help="Only these metrics of the protocol (e.g. autoattack,energy); named metrics must be able to run.")
@click.option("--n-examples", "-n", type=int, default=None, help="Test images per metric (default: the run's eval.n_examples).")
@click.option("--samples", default=None, metavar="FILE.npz", help="Generated samples (uint8 NHWC under 'x') for fid/kid/is/energy.")
@click.option("--weights", default=None, metavar="PATH", help="InceptionV3 weights for FID (see `bench fid-weights`).")
@click.option("--checkpoint", default=None, metavar="PATH", help="Evaluate this checkpoint instead of checkpoints/last.pt.")
@click.option("--set", "sets", multiple=True, metavar="METRIC.KEY=VALUE",
              help="Override a metric setting, e.g. --set autoattack.n_examples=200 --set fid.n_samples=2000.")
@click.option("--batch-size", type=int, default=None, help="Evaluation batch size (default: the run's).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--out", default="results", show_default=True, help="Results root holding runs/<run-id>/.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def eval_(run_ref, protocol, metrics_, n_examples, samples, weights, checkpoint, sets, batch_size, device, out, quiet):
    """Evaluate a saved run and merge the results into its record (earlier results are kept).

    \b
    Examples:
      bench eval 20261124-101500-pgd-at-shapes10-1a2b3c
      bench eval RUN --protocol standard --n-examples 500 --set autoattack.n_examples=200
      bench eval RUN --protocol paper --metrics clean,pgd,autoattack
      bench eval RUN --metrics fid,kid,is --samples samples.npz --weights inception.pth
    """
    from bench.records import resolve_run

    run_dir = resolve_run(run_ref, out)
    metrics = [m.strip() for m in metrics_.split(",") if m.strip()] if metrics_ else None
    t0 = time.perf_counter()
    results, skipped, record = evaluate_saved_run(
        run_dir, protocol=protocol, metrics=metrics, n_examples=n_examples, samples=samples, weights=weights,
        checkpoint=checkpoint, device=device, batch_size=batch_size, overrides=parse_overrides(sets),
        show_progress=not quiet, echo=lambda s: click.echo(s, err=True))
    for name, res in results.items():
        click.echo(f"{record['run_id']} [{protocol}] {name:11s} {format_result(name, res)}")
        for art, rel in (res.get("artifacts") or {}).items():
            click.echo(f"{'':{len(record['run_id']) + len(protocol) + 4}}{art}: {Path(run_dir) / rel}")
    click.echo(f"record: {Path(run_dir) / 'record.json'} ({time.perf_counter() - t0:.1f} s)")
