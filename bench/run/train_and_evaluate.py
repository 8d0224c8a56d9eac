"""Train a run and evaluate it, writing its record as it goes: what `bench run` does once the run
exists, new or resumed (bench/run/runner.py); docs/architecture.md shows the flow."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.config import RunConfig
from bench.core.errors import BenchError, DiskFull, DivergenceError, InterruptedRun
from bench.core.records import RunRecord
from bench.core.run_dirs import RunLock
from bench.core.signals import terminate_as_interrupt
from bench.run.evaluation import evaluate_into, evaluation_model
from bench.run.record_fields import (
    set_distributed,
    set_evaluated_checkpoint,
    set_resumed_config,
    set_throughput,
)
from bench.run.resume import Resume
from bench.run.saved_runs import saved_buffer
from bench.train import distributed as D
from bench.train.loggers import RunLoggers, final_metrics
from bench.train.trainer import Trainer, TrainState


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
            record.set_status(event, record.get("message"), save=False)
        record.save()

    return update


def _mark(record: RunRecord, status: str, message: str, main: bool) -> None:
    """Set the run's status and save it quietly (rank 0): if even that cannot be written (a full
    disk), the dead lock holder makes `bench show` and `bench compare` read the run as interrupted
    (bench.core.run_dirs.live_status)."""
    record.set_status(status, message, save=False)
    if main:
        try:
            record.save()
        except (BenchError, OSError):
            pass


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]


def train_and_evaluate(
    cfg: RunConfig,
    data,
    device,
    record: RunRecord,
    show_progress: bool,
    resume: Resume | None,
    build: Callable[[], tuple],
    dist: D.DistInfo = D.SINGLE,
    announce: Callable[[str], None] | None = None,
) -> RunResult:
    """Train and evaluate, holding the run directory's lock (rank 0) so no second process trains
    it. ``build()`` gives the (model, method) pair, called under the lock."""
    with RunLock(record.run_dir) if dist.is_main else contextlib.nullcontext():
        return _locked(cfg, data, device, record, show_progress, resume, build, dist, announce)


def _locked(cfg, data, device, record, show_progress, resume, build, dist, announce) -> RunResult:
    run_dir = record.run_dir
    main = dist.is_main
    save = record.save if main else (lambda: None)
    if main:
        record.remove_litter()  # temporary files of writes a kill interrupted
    resume_from = resume.checkpoint if resume is not None else None
    ref: list = []
    try:  # a failure here is the run's settings' (e.g. an optimiser refusing them): it never trained
        model, method = build()
        D.broadcast_parameters(model, dist)
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
    except Exception as exc:
        message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        _mark(record, "failed", message, main)
        raise
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
            announce(f"run {record['run_id']}: {note}")
        record.add_resume(0, resume.overrides, note=note)
    if resume is not None and resume.overrides:  # under the lock: nobody else trains this run now
        set_resumed_config(record, cfg, resume.overrides)
    record.set_status("running", save=False)
    if dist.enabled:
        set_distributed(
            record,
            world_size=dist.world,
            backend="nccl" if device.type == "cuda" else "gloo",
            per_rank_batch=cfg.data.batch_size,
            global_batch=cfg.data.batch_size * dist.world,
        )
    save()
    try:
        if main:  # after the resume: an appending logger drops what it holds beyond this step
            # -q: nothing on the terminal
            names = [n for n in cfg.train.loggers if show_progress or n != "console"]
            trainer.use_loggers(
                RunLoggers.create(names, run_dir, cfg, start_step=trainer.state.step), show_progress
            )
        return _fit_and_evaluate(cfg, data, device, record, trainer, show_progress, dist)
    except (InterruptedRun, DivergenceError):
        raise
    except DiskFull as exc:
        hint = f"{exc}, then continue with: bench run --resume {run_dir.name}"
        _mark(record, "interrupted", hint, main)
        raise DiskFull(hint) from None
    except BenchError as exc:
        _mark(record, "failed", str(exc), main)
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
        record.set_status(record["status"], str(exc), save=False)
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
        set_distributed(record, ranks_in_sync=D.model_in_sync(model, dist))  # weights and buffers
    trainer.on_update(trainer.state, "done")
    # Training's last collective is behind every rank: they release the process group together, here,
    # and the ranks other than 0 leave (the last checkpoint is complete: save_checkpoint's barrier).
    # Nothing after this point is collective. Waiting in a barrier for rank 0's evaluation (AutoAttack,
    # FID: hours) would outlast the group's timeout and its watchdog would kill the run mid-evaluation;
    # without a group, rank 0 also has no watchdog to notice the others leaving.
    D.shutdown(dist)
    if not main:
        return RunResult(record["run_id"], run_dir, record.data)
    if cfg.eval.enabled:
        weights, source = _evaluated_weights(cfg, trainer, record)
        try:
            # SIGTERM too: a scheduler's stop must not leave `running`
            with terminate_as_interrupt():
                # the model `bench eval` evaluates too: eager, fp32, NCHW, eval mode, no parameter gradients
                evaluated = evaluation_model(cfg, data.num_classes, weights, device, source)
                buffer = saved_buffer(trainer.method.state_dict())
                evaluate_into(record, evaluated, data, cfg, device, show_progress, buffer=buffer)
        # Ctrl-C during a (long) evaluation: the trained weights are checkpointed
        except KeyboardInterrupt:
            record.set_status(
                "interrupted",
                "interrupted during the evaluation; finish it with: "
                f"bench run --resume {run_dir.name}",
            )
            raise InterruptedRun(record["message"])
        trainer.loggers.final(_hparams(cfg), final_metrics(record.get("evaluations") or {}))
    record.set_status("complete", save=False)
    images = record["training"]["total_steps"] * cfg.data.batch_size * dist.world
    seconds = record["timings"].get("train_seconds", 0)
    set_throughput(record, round(images / max(seconds, 1e-9), 1))
    record.save()  # no barrier after it: the other ranks have left (see above)
    return RunResult(record["run_id"], run_dir, record.data)


def _evaluated_weights(cfg: RunConfig, trainer: Trainer, record: RunRecord):
    """The weights the end-of-run evaluation takes and their source, recorded in the record: the
    final ones (the averaged ones with EMA: the model such a run reports), or best.pt."""
    weights = trainer.ema.state_dict() if trainer.ema is not None else trainer.model.state_dict()
    source: Path | str = "checkpoints/last.pt"
    evaluated = {"checkpoint": "checkpoints/last.pt", "step": trainer.state.step}
    best = record.run_dir / "checkpoints" / "best.pt"
    if cfg.eval.checkpoint == "best" and best.is_file():
        from bench.train import checkpoint as ckpt_io

        weights, source = ckpt_io.load(best, expect_digest=trainer.config_digest)["model"], best
        evaluated = {**trainer.state.best, "checkpoint": "checkpoints/best.pt"}
    elif cfg.eval.checkpoint == "best":  # training ended before the first validation
        evaluated["note"] = "no validation ran, so the final weights were evaluated"
    elif trainer.ema is not None:
        evaluated["weights"] = f"ema (decay {cfg.train.ema_decay:g})"
    set_evaluated_checkpoint(record, evaluated)
    return weights, source


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
