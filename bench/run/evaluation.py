"""Evaluating runs: the end-of-run evaluation of `bench run` and `bench eval` on a saved run.

Both run a protocol's metrics (:func:`metrics.evaluate`) and merge the results into the run's
:class:`~bench.core.records.RunRecord`. For a saved run nothing is written until a metric has produced
its result: every check that can fail early (unknown metric or protocol, missing samples, missing
Inception weights) runs before any evaluation, and a metric that fails leaves its earlier entry
untouched (results of the metrics that finished before it are kept). An interrupted AutoAttack
keeps its state in the run directory and resumes when the same command is run again.

Both evaluate the same model: :func:`evaluation_model` builds it afresh from the trained weights,
eager (never the training loop's compiled graph), fp32, NCHW, in eval mode and with no parameter
requiring a gradient, and both run under the same precision flags (full fp32 unless
``eval.tf32``; see :mod:`bench.core.device`), which every result records. The end-of-run numbers
and those of `bench eval RUN` on the same protocol and n are therefore the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from bench.core.device import current_precision, evaluation_precision, precision, resolve_device
from bench.core.errors import BenchError, InterruptedRun
from bench.core.records import RunRecord
from bench.core.signals import terminate_as_interrupt
from bench.models import build_model
from bench.run.saved_runs import buffer_state, load_run_model
from bench.train import checkpoint
from metrics import METRICS, EvalContext, Presentation, evaluate, get_protocol, presentation
from metrics.guards import apply_ordering
from metrics.protocols import preflight


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
    """``METRIC.KEY=VALUE`` items -> ``{metric: {key: value}}`` (values parsed as JSON when they are JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        metric, dot, name = key.strip().partition(".")
        if not sep or not dot or not metric or not name:
            raise BenchError(
                f"--set {item!r}: write METRIC.KEY=VALUE, e.g. --set autoattack.n_examples=200"
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = [v for v in raw.split(",")] if "," in raw else raw
        out.setdefault(metric, {})[name] = value
    return out


GENERATION_METRICS = ("fid", "kid", "is")


def generation_overrides(
    protocol: str, metrics: list[str] | None, samples: int | None, reference: int | None
) -> dict[str, dict[str, Any]]:
    """``--fid-samples`` / ``--fid-reference`` as settings of the generation metrics this evaluation
    runs: ``n_samples`` (generated images) and ``n_real`` (reference images; IS reads none)."""
    if samples is None and reference is None:
        return {}
    for flag, value in (("--fid-samples", samples), ("--fid-reference", reference)):
        if value is not None and value < 2:
            raise BenchError(
                f"{flag} must be at least 2 (a covariance needs two images), got {value}"
            )
    names = list(get_protocol(protocol).metrics) if metrics is None else metrics
    chosen = [m for m in names if m in GENERATION_METRICS]
    if not chosen:
        raise BenchError(
            f"--fid-samples/--fid-reference set generation metrics, and this evaluation runs none "
            f"({', '.join(names)}); add --metrics fid,kid or use --protocol standard"
        )
    out: dict[str, dict[str, Any]] = {}
    for m in chosen:
        if samples is not None:
            out.setdefault(m, {})["n_samples"] = samples
        if reference is not None and m != "is":
            out.setdefault(m, {})["n_real"] = reference
    return out


def merge_overrides(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later parts win per metric and key (``--set`` after the flags that abbreviate it)."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for metric, items in part.items():
            out.setdefault(metric, {}).update(items)
    return out


def format_result(metric: str, res: dict[str, Any]) -> str:
    """One line for a stored result, as the metric presents itself (its headline numbers if its own
    summary does not fit the result, e.g. a result of an older version)."""
    metric = (
        res.get("metric") or metric.split("[")[0]
    )  # a result under changed settings: "pgd[steps=50]"
    try:
        text = presentation(metric).describe(metric, res)
    except (KeyError, TypeError, ValueError):
        text = Presentation().describe(metric, res)
    ci = res.get("accuracy_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f"  95% CI [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]%"
    if res.get("reliable") is False:
        failed = [k for k, c in (res.get("checks") or {}).items() if not c.get("passed", True)]
        text += f"  UNRELIABLE (failed: {', '.join(failed)}; see unreliable_reasons in the record)"
    elif res.get("reliable") is None and presentation(metric).checked:
        text += "  (unchecked: stored before the guardrail checks; evaluate again)"
    return text


def evaluation_model(
    cfg, num_classes: int, weights: dict, device, source: str | Path = "the trained weights"
) -> torch.nn.Module:
    """The model every evaluation runs (the end of `bench run` and `bench eval` alike): the run's
    architecture built afresh and given ``weights`` (a state dict: the final, EMA or best weights),
    eager, fp32, NCHW, in eval mode, no parameter requiring a gradient.

    Why not the training model: it may be compiled (AutoAttack's shrinking batches would recompile
    it over and over) and channels_last (other kernels, other rounding), and its parameters require
    gradients, so an attack's ``.backward()`` on the input (FAB's) accumulates into their ``.grad``.
    ``source`` names the weights in a message when they do not fit the architecture."""
    model = build_model(cfg.model, num_classes)
    checkpoint.load_weights(
        model, weights, source
    )  # copies into the fresh model's own fp32 NCHW tensors
    model = model.to(device=device, dtype=torch.float32, memory_format=torch.contiguous_format)
    model.eval()
    model.requires_grad_(False)
    return model


def load_evaluation_model(
    run_dir: Path, device: torch.device | None = None, checkpoint: str | None = None
):
    """A saved run's :func:`evaluation_model` (from ``checkpoint``, else the run's own choice of weights),
    with its config, data and record: what `bench eval` and `bench perf --aa-run` evaluate."""
    loaded, cfg, data, record = load_run_model(run_dir, device, checkpoint)
    model = evaluation_model(
        cfg,
        data.num_classes,
        loaded.state_dict(),
        next(loaded.parameters()).device,
        checkpoint or Path(run_dir) / "checkpoints",
    )
    return model, cfg, data, record


def run_metrics(
    model,
    data,
    protocol: str,
    n_examples: int,
    ctx: EvalContext,
    metrics: list[str] | None,
    overrides: dict[str, dict[str, Any]] | None = None,
    skipped: dict[str, str] | None = None,
    tf32: bool = False,
) -> dict[str, dict[str, Any]]:
    """:func:`metrics.evaluate` under the evaluation's precision flags (full fp32 unless ``tf32``), each
    result recording the flags it was computed under (as torch held them) in ``precision``."""
    with precision(evaluation_precision(tf32)):
        results = evaluate(
            model, data, protocol, n_examples, ctx, metrics, overrides, skipped=skipped
        )
        flags = current_precision()
    for res in results.values():
        res["precision"] = dict(flags)
    return results


def evaluate_into(
    record: RunRecord,
    model,
    data,
    cfg,
    device,
    show_progress: bool,
    protocol: str | None = None,
    n_examples: int | None = None,
    metrics: list[str] | None = None,
    buffer: dict | None = None,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` (the run's, in memory, as :func:`evaluation_model` built it) with a protocol and
    merge the results into ``record``. ``buffer``: the run's replay-buffer state (in memory, as its last
    checkpoint holds it), if any."""
    proto = protocol or cfg.eval.protocol
    # the run config lets generative metrics draw samples with the run's own sampler
    ctx = EvalContext(
        device=device,
        batch_size=cfg.eval.batch_size,
        seed=cfg.seed,
        out_dir=record.run_dir,
        show_progress=show_progress,
        extra={"cfg": cfg, "run_dir": str(record.run_dir), "samples": None, "weights": None},
    )
    if (
        buffer is not None
    ):  # as `bench eval` has it from the checkpoint: sample_source=auto then means the buffer
        ctx.extra["buffer_state"] = buffer
    skipped: dict[str, str] = {}
    results = run_metrics(
        model,
        data,
        proto,
        n_examples or cfg.eval.n_examples,
        ctx,
        metrics,
        skipped=skipped,
        tf32=cfg.eval.tf32,
    )
    for (
        name,
        why,
    ) in skipped.items():  # optional metrics whose inputs are missing (e.g. FID weights)
        print(f"skipped {name}: {why}", file=sys.stderr)
    record.merge_evaluation(proto, results, skipped=skipped)
    return results


def evaluate_saved_run(
    run_dir: Path,
    protocol: str = "standard",
    metrics: list[str] | None = None,
    n_examples: int | None = None,
    samples: str | None = None,
    weights: str | None = None,
    checkpoint: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    overrides: dict | None = None,
    show_progress: bool = True,
    echo=None,
    tf32: bool | None = None,
):
    """Library entry point of `bench eval`: returns (results, skipped, record). ``tf32``: the
    evaluation's TF32 flag (None: the run's ``eval.tf32``)."""
    check_request(protocol, metrics, n_examples)
    dev = resolve_device(device) if device else None
    # the same model as the end of `bench run` evaluates: built afresh from the checkpoint's weights
    model, cfg, data, _ = load_evaluation_model(run_dir, dev, checkpoint)
    return evaluate_loaded(
        Path(run_dir),
        model,
        cfg,
        data,
        protocol=protocol,
        metrics=metrics,
        n_examples=n_examples,
        samples=samples,
        weights=weights,
        batch_size=batch_size,
        overrides=overrides,
        show_progress=show_progress,
        echo=echo,
        buffer=buffer_state(run_dir, checkpoint),
        tf32=tf32,
    )


def check_request(protocol: str, metrics: list[str] | None, n_examples: int | None) -> None:
    """The checks of an evaluation request that need no model: -n, the protocol and metric names."""
    if n_examples is not None and n_examples < 1:  # 0 would mean "every test image" to the metrics
        raise BenchError(
            f"-n/--n-examples must be a positive number of test images, got {n_examples}"
        )
    get_protocol(protocol)
    for m in metrics or ():
        METRICS.get(m)  # unknown names fail here, with the list of known ones


def evaluate_loaded(
    run_dir,
    model,
    cfg,
    data,
    *,
    protocol: str = "standard",
    metrics: list[str] | None = None,
    n_examples: int | None = None,
    samples: str | None = None,
    weights: str | None = None,
    batch_size: int | None = None,
    overrides: dict | None = None,
    show_progress: bool = True,
    echo=None,
    buffer: dict | None = None,
    tf32: bool | None = None,
):
    """Evaluate a loaded ``model`` (with its run's ``cfg`` and ``data``) into the record in ``run_dir``:
    returns (results, skipped, record). ``run_dir`` may be a function that returns the directory
    (e.g. creates it): it is called only once every check has passed, so a refused request writes
    nothing. ``buffer``: the run's saved replay-buffer state, if any. ``tf32``: None = ``cfg.eval.tf32``.
    The model is put in eval mode with no parameter requiring a gradient (an attack's backward on the
    input must leave no ``.grad`` in it)."""
    echo = echo or (lambda s: None)
    if tf32 is not None and not isinstance(tf32, bool):
        raise BenchError(f"tf32 must be true or false, got {tf32!r}")
    tf32 = cfg.eval.tf32 if tf32 is None else tf32
    model.eval()
    model.requires_grad_(False)
    proto = get_protocol(protocol)
    dev = next(model.parameters()).device
    extra: dict[str, Any] = {
        "cfg": cfg,
        "run_dir": None if callable(run_dir) else str(run_dir),
        "samples": samples,
        "weights": weights,
    }
    if buffer is not None:
        extra["buffer_state"] = buffer
    ctx = EvalContext(
        device=dev,
        batch_size=batch_size or cfg.eval.batch_size,
        seed=cfg.seed,
        out_dir=None if callable(run_dir) else Path(run_dir),
        show_progress=show_progress,
        extra=extra,
    )
    n = n_examples if n_examples is not None else cfg.eval.n_examples
    names, skipped = preflight(protocol, metrics, ctx, n, overrides)  # fails before anything runs
    if callable(run_dir):
        run_dir = Path(run_dir())
        ctx.out_dir, extra["run_dir"] = run_dir, str(run_dir)
    for name, why in skipped.items():
        echo(f"skipped {name}: {why}")
    results: dict[str, dict[str, Any]] = {}

    def merge(rec: RunRecord) -> None:
        # the ordering checks (AutoAttack <= PGD) also look at this protocol's stored results
        apply_ordering(results, (rec.data.get("evaluations") or {}).get(protocol))
        rec.merge_evaluation(protocol, results, save=False)

    def save() -> dict:  # read-modify-write under the run's lock: the run may be training meanwhile
        return RunRecord.update(run_dir, merge).data

    try:
        with (
            terminate_as_interrupt()
        ):  # SIGTERM (a scheduler's stop) saves the finished metrics too
            for name in names:
                echo(f"[{proto.name}] {name} ...")
                own = (
                    {name: overrides[name]} if overrides and name in overrides else None
                )  # checked above
                results.update(run_metrics(model, data, protocol, n, ctx, [name], own, tf32=tf32))
    except KeyboardInterrupt:
        if results:
            save()
        hint = (
            f"; AutoAttack keeps its state under {Path(run_dir) / 'autoattack'}/ and resumes"
            if "autoattack" in names and "autoattack" not in results
            else ""
        )
        raise InterruptedRun(
            f"evaluation interrupted{' (finished metrics saved)' if results else ''}; "
            f"run the same command again to continue{hint}"
        )
    except BaseException:
        if results:
            save()
        raise
    return results, skipped, save() if results else RunRecord.load(run_dir).data
