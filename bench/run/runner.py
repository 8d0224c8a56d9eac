"""Library entry points behind `bench run`: start a run, resume one.

The CLI only parses arguments and calls these; tests call them directly. The run's record is a
:class:`~bench.core.records.RunRecord`; the end-of-run evaluation is :func:`bench.run.evaluation.evaluate_into`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.config import RunConfig
from bench.core.device import prepare_determinism, resolve_device
from bench.core.errors import BenchError, DiskFull, DivergenceError, InterruptedRun
from bench.core.records import RunLock, RunRecord, new_run_dir, resolve_run, run_config
from bench.core.signals import terminate_as_interrupt
from bench.data import load_run_data
from bench.data.stream import check_augment_fits, check_batch_fits
from bench.models import build_model
from bench.run.evaluation import evaluate_into, evaluation_model
from bench.run.resolve import preset_changes, resume_overrides, run_plugins, variant_changes
from bench.run.saved_runs import saved_buffer
from bench.train import distributed as D
from bench.train.loggers import RunLoggers, final_metrics
from bench.train.trainer import Trainer, TrainState
from methods import get_method


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]


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


def _record_updater(record: RunRecord, trainer_ref: list):
    def update(state: TrainState, event: str) -> None:
        trainer = trainer_ref[0]
        record.update_training(
            steps_done=state.step,
            total_steps=trainer.total_steps,
            steps_per_epoch=trainer.steps_per_epoch,
            epochs_done=trainer.epochs_done,
            history=state.history,
            validation=state.validation,
            rollbacks=state.rollback_events,
            best=state.best,
            lr_scale=state.lr_scale,
            train_seconds=state.train_seconds,
            artifacts={
                "checkpoint": "checkpoints/last.pt",
                **getattr(trainer.method, "artifacts", dict)(),
            },
            save=False,
        )
        if event in ("interrupted", "diverged"):
            record.data["status"] = event
        record.save()

    return update


@dataclass
class Resume:
    """How a resume continues: from which checkpoint (None: the run has none, so it restarts from
    step 0 in place) and which settings it changed (see :data:`bench.run.resolve.RESUME_OVERRIDABLE`)."""

    checkpoint: Path | None
    overrides: dict[str, Any]


def _save_quietly(record: RunRecord) -> None:
    """Save a failure's status; if even that cannot be written (a full disk), the dead lock holder
    makes `bench show` and `bench compare` read the run as interrupted (bench.core.records.live_status)."""
    try:
        record.save()
    except (BenchError, OSError):
        pass


def _train_and_evaluate(
    cfg,
    data,
    device,
    record: RunRecord,
    show_progress,
    resume: Resume | None,
    built=None,
    dist: D.DistInfo = D.SINGLE,
    announce=None,
) -> RunResult:
    """Train and evaluate, holding the run directory's lock (rank 0) so no second process trains it."""
    import contextlib

    with RunLock(record.run_dir) if dist.is_main else contextlib.nullcontext():
        return _train_and_evaluate_locked(
            cfg, data, device, record, show_progress, resume, built, dist, announce
        )


def _train_and_evaluate_locked(
    cfg,
    data,
    device,
    record: RunRecord,
    show_progress,
    resume: Resume | None,
    built,
    dist: D.DistInfo,
    announce,
) -> RunResult:
    run_dir = record.run_dir
    main = dist.is_main
    save = record.save if main else (lambda: None)
    if main:
        record.remove_litter()  # temporary files of writes a kill interrupted
    resume_from = resume.checkpoint if resume is not None else None
    model, method = built or _build(cfg, data, device)
    D.broadcast_parameters(model, dist)
    ref: list = []
    trainer = Trainer(
        cfg,
        model,
        method,
        data,
        device,
        run_dir,
        on_update=_record_updater(record, ref) if main else None,
        show_progress=show_progress,
        dist=dist,
        config_digest=record.get("config_digest"),
    )
    ref.append(trainer)
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        if announce and main:
            announce(
                f"resuming run {record['run_id']} ({cfg.method} on {cfg.data.dataset}) at step "
                f"{trainer.state.step} from {resume_from.name}"
                + "".join(f"; {k}: {v['from']} -> {v['to']}" for k, v in resume.overrides.items())
            )
        record.add_resume(trainer.state.step, resume.overrides)
    elif resume is not None:
        note = "no checkpoint had been written (stopped before its first); trained from step 0 in place"
        if announce and main:
            announce(f"run {record['run_id']} has {note}")
        record.add_resume(0, resume.overrides, note=note)
    if resume is not None and resume.overrides:  # under the lock: nobody else trains this run now
        record.data["config"] = cfg.to_dict()
        try:
            record.data["changes"] = preset_changes(cfg.to_dict())
        except Exception:  # a config the presets no longer describe: `bench compare` works it out
            record.data["changes"] = None
    record.set_status("running", save=False)
    if dist.enabled:
        record.data["distributed"] = {
            "world_size": dist.world,
            "backend": "nccl" if device.type == "cuda" else "gloo",
            "per_rank_batch": cfg.data.batch_size,
            "global_batch": cfg.data.batch_size * dist.world,
        }
    save()
    try:
        if main:  # after the resume: an appending logger drops what it holds beyond this step
            names = [
                n for n in cfg.train.loggers if show_progress or n != "console"
            ]  # -q: nothing on the terminal
            trainer.use_loggers(
                RunLoggers.create(names, run_dir, cfg, start_step=trainer.state.step), show_progress
            )
        return _fit_and_evaluate(cfg, data, device, record, trainer, show_progress, dist)
    except (InterruptedRun, DivergenceError):
        raise
    except DiskFull as exc:
        hint = f"{exc}, then continue with: bench run --resume {run_dir.name}"
        record.set_status("interrupted", hint, save=False)
        if main:
            _save_quietly(record)
        raise DiskFull(hint) from None
    except BenchError as exc:
        record.set_status("failed", str(exc), save=False)
        if main:
            _save_quietly(record)
        raise
    finally:
        trainer.loggers.close()


def _fit_and_evaluate(
    cfg, data, device, record: RunRecord, trainer: Trainer, show_progress, dist: D.DistInfo
) -> RunResult:
    run_dir, main, model = record.run_dir, dist.is_main, trainer.model
    save = record.save if main else (lambda: None)
    try:
        trainer.fit()
    except (InterruptedRun, DivergenceError) as exc:
        record.data["message"] = str(exc)
        save()
        raise
    except KeyboardInterrupt:
        record.set_status(
            "interrupted",
            f"aborted; continue from the last checkpoint with: bench run --resume {run_dir.name}",
            save=False,
        )
        save()
        raise InterruptedRun(record["message"])
    if dist.enabled:
        record.data["distributed"]["ranks_in_sync"] = D.model_in_sync(
            model, dist
        )  # weights and buffers
    trainer.on_update(trainer.state, "done")
    # Training's last collective is behind every rank: they release the process group together, here,
    # and the ranks other than 0 leave (the last checkpoint is complete: save_checkpoint's barrier).
    # Nothing after this point is collective. Waiting in a barrier for rank 0's evaluation (AutoAttack,
    # FID: hours) would outlast the group's timeout and its watchdog would kill the run mid-evaluation;
    # without a group, rank 0 also has no watchdog to notice the others leaving.
    D.shutdown(dist)
    if not main:
        return RunResult(record["run_id"], run_dir, record.data)
    # the final weights (the averaged ones with EMA: the model such a run reports), unless best.pt below
    weights = trainer.ema.state_dict() if trainer.ema is not None else model.state_dict()
    source: Path | str = "checkpoints/last.pt"
    if cfg.eval.enabled and cfg.eval.checkpoint == "best":
        best = run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            from bench.train import checkpoint as ckpt_io

            weights, source = ckpt_io.load(best, expect_digest=trainer.config_digest)["model"], best
            record.data["evaluated_checkpoint"] = {
                **trainer.state.best,
                "checkpoint": "checkpoints/best.pt",
            }
        else:  # training ended before the first validation
            record.data["evaluated_checkpoint"] = {
                "checkpoint": "checkpoints/last.pt",
                "step": trainer.state.step,
                "note": "no validation ran, so the final weights were evaluated",
            }
    elif cfg.eval.enabled:
        record.data["evaluated_checkpoint"] = {
            "checkpoint": "checkpoints/last.pt",
            "step": trainer.state.step,
        }
        if trainer.ema is not None:  # the averaged weights are the model a run with EMA reports
            record.data["evaluated_checkpoint"]["weights"] = f"ema (decay {cfg.train.ema_decay:g})"
    if cfg.eval.enabled:
        try:
            with (
                terminate_as_interrupt()
            ):  # SIGTERM too: a scheduler's stop must not leave `running`
                # the model `bench eval` evaluates too: eager, fp32, NCHW, eval mode, no parameter gradients
                evaluate_into(
                    record,
                    evaluation_model(cfg, data.num_classes, weights, device, source),
                    data,
                    cfg,
                    device,
                    show_progress,
                    buffer=saved_buffer(trainer.method.state_dict()),
                )
        except (
            KeyboardInterrupt
        ):  # Ctrl-C during a (long) evaluation: the trained weights are checkpointed
            record.set_status(
                "interrupted",
                "interrupted during the evaluation; finish it with: "
                f"bench run --resume {run_dir.name}",
            )
            raise InterruptedRun(record["message"])
    if cfg.eval.enabled:
        trainer.loggers.final(_hparams(cfg), final_metrics(record.get("evaluations") or {}))
    record.set_status("complete", save=False)
    t = record.data["timings"]
    steps = record["training"]["total_steps"]
    t["images_per_second"] = round(
        steps * cfg.data.batch_size * dist.world / max(t.get("train_seconds", 0), 1e-9), 1
    )
    record.save()  # no barrier after it: the other ranks have left (see above)
    return RunResult(record["run_id"], run_dir, record.data)


def _hparams(cfg: RunConfig) -> dict[str, Any]:
    """The settings a run's final numbers are filed under in the loggers (e.g. TensorBoard's HPARAMS)."""
    return {
        "method": cfg.method,
        "preset": cfg.preset,
        "dataset": cfg.data.dataset,
        "arch": cfg.model.arch,
        "seed": cfg.seed,
        "lr": cfg.optim.lr,
        "batch_size": cfg.data.batch_size,
        "epochs": cfg.train.epochs,
    }


def _prepare_data_ranked(cfg: RunConfig, dist: D.DistInfo):
    """Rank 0 loads first (it may generate or download and cache the files), then the others."""
    if dist.is_main:
        data = load_run_data(cfg)
    D.barrier(dist)
    if not dist.is_main:
        data = load_run_data(cfg)
    return data


def start_run(
    cfg: RunConfig,
    out: str | Path = "results",
    show_progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Train and evaluate a new run. ``announce`` receives one line naming the run once it exists."""
    dist, device_name = D.init(cfg.device)
    device = resolve_device(device_name)
    prepare_determinism(
        cfg.train.deterministic
    )  # before the first matmul on the device (the probe's)
    data = _prepare_data_ranked(
        cfg, dist
    )  # fails before anything is written if the data is missing
    built = _build(cfg, data, device)  # so do a bad architecture (e.g. wrn depth) and method setup
    _probe(built[0], data, cfg, device)
    for spec in built[
        1
    ].batch_specs():  # every batch of a step must fit the training set, and its augmentation
        check_batch_fits(
            spec.batch_size or cfg.data.batch_size,
            dist.world,
            data.x_train.shape[0],
            spec.batch_size_setting,
        )
        check_augment_fits(
            data.image_shape,
            cfg.data.augment if spec.augment is None else spec.augment,
            cfg.data.pad_mode,
        )
    try:
        changes = preset_changes(cfg.to_dict())
        variant = variant_changes(cfg.method, cfg.preset)
    except Exception:  # a config the presets no longer describe: `bench compare` works it out ("?")
        changes = variant = None
    run = new_run_dir(out, cfg.method, cfg.data.dataset) if dist.is_main else None
    run_id, run_dir = D.broadcast_object(run, dist)
    plugins = run_plugins(
        cfg
    )  # the plugin packages behind its method, dataset, architecture and sampler
    record = RunRecord.create(
        run_dir,
        run_id,
        cfg,
        device,
        data.summary(),
        changes=changes,
        save=dist.is_main,
        plugins=plugins,
        variant=variant,
    )
    if dist.is_main:
        if announce:
            announce(
                f"run {run_id}: {cfg.method} on {cfg.data.dataset} ({cfg.model.arch}, preset {cfg.preset}, "
                f"seed {cfg.seed}, {device.type}{f' x{dist.world}' if dist.enabled else ''})"
            )
    return _train_and_evaluate(
        cfg, data, device, record, show_progress, resume=None, built=built, dist=dist
    )


def resume_point(run_dir: Path, checkpoint_path: str | None) -> Path | None:
    """The checkpoint a resume continues from: the one given, else ``last.pt``; None when the run
    stopped before writing any (it then trains from step 0 in place, exactly as a new run would)."""
    if checkpoint_path:
        return Path(checkpoint_path)  # must exist: loading it says so otherwise
    ckpt_dir = Path(run_dir) / "checkpoints"
    last = ckpt_dir / "last.pt"
    if last.is_file():
        return last
    periodic = sorted(ckpt_dir.glob("step-*.pt"))
    if periodic:
        raise BenchError(
            f"checkpoint {last} is missing; continue from the newest periodic one with "
            f"--checkpoint {periodic[-1]}"
        )
    return None


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
    :data:`bench.run.resolve.RESUME_OVERRIDABLE`, and each resume records what it changed."""
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
    return _train_and_evaluate(
        cfg,
        data,
        dev,
        record,
        show_progress,
        resume=Resume(ckpt, changed),
        dist=dist,
        announce=announce,
    )
