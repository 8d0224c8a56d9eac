"""Library entry points behind `bench run`: start a run, resume one (training and evaluating it is
:func:`bench.run.train_and_evaluate.train_and_evaluate`). The CLI only parses arguments and calls
these; tests call them directly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bench.core.config import RunConfig
from bench.core.device import prepare_determinism, resolve_device
from bench.core.errors import BenchError
from bench.core.record_reading import run_config
from bench.core.records import RunRecord
from bench.core.run_dirs import new_run_dir, resolve_run
from bench.data import load_run_data
from bench.data.stream import check_augment_fits, check_batch_fits
from bench.models import build_model
from bench.run.record_fields import set_resolution
from bench.run.resolve import Resolved, resolved_from_config
from bench.run.resume import Resume, resume_overrides, resume_point
from bench.run.train_and_evaluate import RunResult, train_and_evaluate
from bench.train import distributed as D
from methods import get_method


def _build(cfg: RunConfig, data, device: torch.device):
    method = get_method(cfg.method).from_dict(cfg.method_cfg)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    model = build_model(cfg.model, data.num_classes).to(device)
    method.setup(model, data, device)
    return model, method


def _probe(model: torch.nn.Module, data, cfg: RunConfig, device: torch.device) -> None:
    """One forward of two test images (eval mode, no gradient): an architecture that cannot take the
    dataset's images fails here, in one line, before the run directory exists."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_test[:2].to(device).float().div(255.0))
    except RuntimeError as exc:
        raise BenchError(
            f"{cfg.model.arch} cannot take {data.name}'s {'x'.join(map(str, data.image_shape))} images "
            f"({' '.join(str(exc).split())[:120]}); choose another --arch"
        )
    finally:
        model.train(was)
    if out.shape != (min(2, data.x_test.shape[0]), data.num_classes):
        raise BenchError(
            f"{cfg.model.arch} returned {tuple(out.shape)} logits for {data.num_classes} classes; "
            "a model must return (batch, classes)"
        )


def _prepare_data_ranked(cfg: RunConfig, dist: D.DistInfo):
    """Rank 0 loads first (it may generate or download and cache the files), then the others."""
    if dist.is_main:
        data = load_run_data(cfg)
    D.barrier(dist)
    if not dist.is_main:
        data = load_run_data(cfg)
    return data


def start_run(
    run: Resolved | RunConfig,
    out: str | Path = "results",
    show_progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Train and evaluate a new run: ``run`` as :func:`bench.run.resolve.resolve` gave it (a bare
    config is described as :func:`~bench.run.resolve.resolved_from_config` does). ``announce``
    receives one line naming the run once it exists."""
    cfg = run.config if isinstance(run, Resolved) else run
    dist, device_name = D.init(cfg.device)
    device = resolve_device(device_name)
    # before the first matmul on the device (the probe's)
    prepare_determinism(cfg.train.deterministic)
    # fails before anything is written if the data is missing
    data = _prepare_data_ranked(cfg, dist)
    built = _build(cfg, data, device)  # so do a bad architecture (e.g. wrn depth) and method setup
    _probe(built[0], data, cfg, device)
    for spec in built[1].batch_specs():  # every batch of a step must fit the training set
        batch = spec.batch_size or cfg.data.batch_size
        check_batch_fits(batch, dist.world, data.x_train.shape[0], spec.batch_size_setting)
        augment = cfg.data.augment if spec.augment is None else spec.augment
        check_augment_fits(data.image_shape, augment, cfg.data.pad_mode)
    resolved = run if isinstance(run, Resolved) else resolved_from_config(cfg)
    new = new_run_dir(out, cfg.method, cfg.data.dataset) if dist.is_main else None
    run_id, run_dir = D.broadcast_object(new, dist)
    record = RunRecord.create(
        run_dir, run_id, cfg, device, data.summary(), save=False, plugins=resolved.plugins
    )
    set_resolution(record, resolved)
    if dist.is_main:
        record.save()
        if announce:
            announce(
                f"run {run_id}: {cfg.method} on {cfg.data.dataset} ({cfg.model.arch}, preset {cfg.preset}, "
                f"seed {cfg.seed}, {device.type}{f' x{dist.world}' if dist.enabled else ''})"
            )
    return train_and_evaluate(
        cfg, data, device, record, show_progress, None, lambda: built, dist=dist
    )


def resume_run(
    ref: str,
    out: str | Path = "results",
    device: str | None = None,
    show_progress: bool = True,
    checkpoint_path: str | None = None,
    announce: Callable[[str], None] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunResult:
    """Continue a run from its checkpoint; ``overrides`` (``--set`` items) may change the settings of
    :data:`bench.run.resume.RESUME_OVERRIDABLE`, and each resume records what it changed."""
    run_dir = resolve_run(ref, out)
    record = RunRecord.load(run_dir)
    if record.get("status") == "complete":
        raise BenchError(
            f"run {record['run_id']} is already complete; start a new run instead of --resume"
        )
    cfg = run_config(record.data)
    cfg, changed = resume_overrides(cfg, overrides) if overrides else (cfg, {})
    if device is not None:
        cfg.device = device
    ckpt = resume_point(run_dir, checkpoint_path)
    dist, device_name = D.init(cfg.device)
    dev = resolve_device(device_name)
    prepare_determinism(cfg.train.deterministic)
    data = _prepare_data_ranked(cfg, dist)
    resume = Resume(ckpt, changed)
    build = lambda: _build(cfg, data, dev)  # noqa: E731 - under the run's lock
    return train_and_evaluate(
        cfg, data, dev, record, show_progress, resume, build, dist=dist, announce=announce
    )
