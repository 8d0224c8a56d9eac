"""Evaluating a model into its run's record, along one path (:func:`evaluate_model`) for the end of
`bench run`, `bench eval RUN` and models trained elsewhere; only where the model comes from differs.
What is checked first, what is kept when a metric fails, and the evaluated model's precision are
described in docs/evaluation.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.device import evaluation_precision, precision, resolve_device
from bench.core.errors import BenchError
from bench.core.records import RunRecord
from bench.core.signals import terminate_as_interrupt
from bench.models import build_model
from bench.run.checkpoint_results import of_weights, weights_digest
from bench.run.saved_runs import buffer_state, load_run_model
from bench.train import checkpoint
from metrics import EvalContext, Presentation, evaluate, get_protocol, presentation
from metrics.engine import check_request, preflight
from metrics.guards import apply_ordering


@dataclass
class EvalOptions:
    """What an evaluation runs, apart from the model: the options of `bench eval`. None takes the
    run's own setting (``eval.n_examples``, ``eval.batch_size``, ``eval.tf32``)."""

    protocol: str = "standard"
    metrics: list[str] | None = (
        None  # only these metrics of the protocol (they must be able to run)
    )
    n_examples: int | None = None
    samples: str | None = None  # generated samples (npz) for fid/kid/is/energy
    weights: str | None = None  # Inception weights for fid/kid/is
    batch_size: int | None = None
    overrides: dict[str, dict[str, Any]] | None = None  # metric -> settings (--set)
    tf32: bool | None = None
    show_progress: bool = True
    echo: Callable[[str], None] | None = None  # told of each metric as it starts

    @classmethod
    def from_flags(
        cls, *, metrics_, fid_samples, fid_reference, sets, quiet, **flags
    ) -> EvalOptions:
        """The options from `bench eval`'s flags (--metrics A,B; --fid-samples and
        --fid-reference, then --set, as settings of the metrics)."""
        metrics = [m.strip() for m in metrics_.split(",") if m.strip()] if metrics_ else None
        overrides = merge_overrides(
            generation_overrides(flags["protocol"], metrics, fid_samples, fid_reference),
            parse_overrides(sets),
        )
        return cls(metrics=metrics, overrides=overrides, show_progress=not quiet, **flags)

    def check(self) -> None:
        """The checks that need no model: -n, --batch-size, --tf32, the protocol, the metrics and
        every setting they would store (types and ranges), so that a refusal loads nothing."""
        for flag, value, what in (
            ("-n/--n-examples", self.n_examples, "test images"),
            ("--batch-size", self.batch_size, "images per batch"),
        ):
            if value is not None and value < 1:  # None: the run's own eval setting
                raise BenchError(
                    f"{flag} must be a positive number of {what}, got {value}; leave it out for "
                    "the run's own setting"
                )
        if self.tf32 is not None and not isinstance(self.tf32, bool):
            raise BenchError(f"tf32 must be true or false, got {self.tf32!r}")
        check_request(self.protocol, self.metrics, self.n_examples, self.overrides)


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
    metric = res.get("metric") or metric.split("[")[0]  # under changed settings: "pgd[steps=50]"
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
    """The model every evaluation runs: the run's architecture built afresh with ``weights``, eager,
    fp32, NCHW, in eval mode, no parameter requiring a gradient (why not the training model:
    docs/evaluation.md). ``source`` names the weights when they do not fit the architecture."""
    model = build_model(cfg.model, num_classes)
    checkpoint.load_weights(model, weights, source)  # into the fresh model's fp32 NCHW tensors
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
    dev, source = next(loaded.parameters()).device, checkpoint or Path(run_dir) / "checkpoints"
    model = evaluation_model(cfg, data.num_classes, loaded.state_dict(), dev, source)
    model.loaded_from = loaded.loaded_from  # which checkpoint: stored with each result
    return model, cfg, data, record


def run_metrics(*args, tf32: bool = False, **kwargs) -> dict[str, dict[str, Any]]:
    """:func:`metrics.evaluate` (the same arguments) under the evaluation's precision flags: full
    fp32 unless ``tf32``. Each result records the flags in ``precision``."""
    with precision(evaluation_precision(tf32)):
        return evaluate(*args, **kwargs)


def evaluate_model(
    model, cfg, data, opts: EvalOptions, record, *, buffer: dict | None = None, checkpoint=None
):
    """Evaluate ``model`` (with its run's ``cfg`` and ``data``) under ``opts`` and merge the results
    into the run's record; returns (results, skipped, record data).

    ``record``: the :class:`RunRecord` of the process that owns the run (the end of `bench run`),
    the run directory (read and written under its lock: the run may be training meanwhile), or a
    function returning the directory, called only once every check has passed, so that a refused
    request writes nothing. ``buffer``: the run's saved replay-buffer state, if any. ``checkpoint``:
    the step and file of the weights, stored in each result with their digest. When a metric
    fails the finished ones are saved; an interrupt (Ctrl-C, SIGTERM) is raised again as a
    ``KeyboardInterrupt`` whose message says what was kept."""
    opts.check()
    model.eval()
    model.requires_grad_(False)  # an attack's backward on the input must leave no .grad in it
    ctx = EvalContext(
        device=next(model.parameters()).device,
        batch_size=cfg.eval.batch_size if opts.batch_size is None else opts.batch_size,
        seed=cfg.seed,
        show_progress=opts.show_progress,
        cfg=cfg,  # generative metrics draw samples with the run's own sampler
        samples=opts.samples,
        weights=opts.weights,
        buffer_state=buffer,
    )
    n = cfg.eval.n_examples if opts.n_examples is None else opts.n_examples
    names, skipped = preflight(opts.protocol, opts.metrics, ctx, n, opts.overrides)
    if callable(record):
        record = record()
    ctx.out_dir = record.run_dir if isinstance(record, RunRecord) else Path(record)
    for name, why in skipped.items():  # optional metrics whose inputs are missing
        print(f"skipped {name}: {why}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    evaluated = {**(checkpoint or {}), "sha256": weights_digest(model)}

    def merge(rec: RunRecord) -> None:
        for res in results.values():
            res["checkpoint"] = evaluated
        # the ordering checks (AutoAttack <= PGD) also look at stored results of the same weights
        stored = (rec.data.get("evaluations") or {}).get(opts.protocol) or {}
        same = {k: r for k, r in stored.items() if of_weights(r, evaluated["sha256"])}
        apply_ordering(results, same)
        rec.merge_evaluation(opts.protocol, results, skipped, save=False)

    def save() -> dict:
        if isinstance(record, RunRecord):
            merge(record)
            record.save()
            return record.data
        return RunRecord.update(ctx.out_dir, merge).data

    tf32 = cfg.eval.tf32 if opts.tf32 is None else opts.tf32
    try:
        with terminate_as_interrupt():  # a scheduler's stop saves the finished metrics too
            run_metrics(
                model,
                data,
                opts.protocol,
                n,
                ctx,
                opts.metrics,
                opts.overrides,
                tf32=tf32,
                results=results,
                announce=opts.echo,
            )
    except BaseException as exc:
        if results:
            save()
        if not isinstance(exc, KeyboardInterrupt):
            raise
        hint = (
            f"; AutoAttack keeps its state under {ctx.out_dir / 'autoattack'}/ and resumes"
            if "autoattack" in names and "autoattack" not in results
            else ""
        )
        raise KeyboardInterrupt(
            f"evaluation interrupted{' (finished metrics saved)' if results else ''}; "
            f"run the same command again to continue{hint}"
        ) from None
    return results, skipped, save()


# -- where the model comes from --------------------------------------------------------------
def evaluate_into(
    record: RunRecord, model, data, cfg, device, show_progress: bool, buffer: dict | None = None
) -> dict[str, dict[str, Any]]:
    """The end of `bench run`: the run's ``model`` (in memory, as :func:`evaluation_model` built it,
    on ``device``) into its own ``record``, with the run's eval settings; returns the results."""
    opts = EvalOptions(cfg.eval.protocol, show_progress=show_progress)
    own = record.data.get("evaluated_checkpoint") or {}
    evaluated = {"step": own.get("step"), "file": own.get("checkpoint")}
    return evaluate_model(model, cfg, data, opts, record, buffer=buffer, checkpoint=evaluated)[0]


def evaluate_saved_run(
    run_dir: Path, opts: EvalOptions, checkpoint: str | None = None, device: str | None = None
):
    """`bench eval RUN`: the saved run's weights (``checkpoint``, else its own choice) rebuilt as the
    end of `bench run` builds them; returns (results, skipped, record data)."""
    opts.check()
    dev = resolve_device(device) if device else None
    model, cfg, data, _ = load_evaluation_model(run_dir, dev, checkpoint)
    buffer = buffer_state(run_dir, checkpoint)
    return evaluate_model(
        model, cfg, data, opts, Path(run_dir), buffer=buffer, checkpoint=model.loaded_from
    )
