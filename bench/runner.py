"""Library entry points behind `bench run`: start a run, resume one, evaluate at the end.

The CLI only parses arguments and calls these; tests call them directly.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench import distributed as D
from bench.config import RunConfig, from_dict
from bench.data import load_dataset, split_validation
from bench.data.stream import check_batch_fits
from bench.errors import BenchError, DivergenceError, InterruptedRun
from bench.models import build_model
from bench.records import RunLock, load_record, new_record, new_run_dir, resolve_run, save_record
from bench.trainer import Trainer, TrainState
from methods import get_method


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def prepare_data(cfg: RunConfig):
    data = load_dataset(cfg.data)
    return split_validation(data, cfg.data.val_size, cfg.seed, cfg.data.train_subset)


def _build(cfg: RunConfig, data, device: torch.device):
    method = get_method(cfg.method).from_dict(cfg.method_cfg)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    model = build_model(cfg.model, data.num_classes).to(device)
    method.setup(model, data, device)
    return model, method


def _record_updater(run_dir: Path, record: dict[str, Any], trainer_ref: list):
    def update(state: TrainState, event: str) -> None:
        tr = record["training"]
        trainer = trainer_ref[0]
        tr.update(
            steps_done=state.step,
            total_steps=trainer.total_steps,
            steps_per_epoch=trainer.steps_per_epoch,
            epochs_done=trainer.epochs_done,
            history=state.history,
            validation=state.validation,
            rollbacks=state.rollback_events,
            best=state.best,
            lr_scale=state.lr_scale,
        )
        record["timings"]["train_seconds"] = round(state.train_seconds, 3)
        record["artifacts"]["checkpoint"] = "checkpoints/last.pt"
        record["artifacts"].update(getattr(trainer.method, "artifacts", dict)())
        if event == "interrupted":
            record["status"] = "interrupted"
        elif event == "diverged":
            record["status"] = "diverged"
        save_record(run_dir, record)

    return update


def _train_and_evaluate(cfg, data, device, run_dir, record, show_progress, resume_from: Path | None,
                        built=None, dist: D.DistInfo = D.SINGLE, announce=None) -> RunResult:
    """Train and evaluate, holding the run directory's lock (rank 0) so no second process trains it."""
    import contextlib

    with RunLock(run_dir) if dist.is_main else contextlib.nullcontext():
        return _train_and_evaluate_locked(cfg, data, device, run_dir, record, show_progress, resume_from, built, dist,
                                          announce)


def _train_and_evaluate_locked(cfg, data, device, run_dir, record, show_progress, resume_from, built,
                               dist: D.DistInfo, announce) -> RunResult:
    model, method = built or _build(cfg, data, device)
    D.broadcast_parameters(model, dist)
    ref: list = []
    trainer = Trainer(cfg, model, method, data, device, run_dir,
                      on_update=_record_updater(run_dir, record, ref), show_progress=show_progress, dist=dist,
                      config_digest=record.get("config_digest"))
    ref.append(trainer)
    main = dist.is_main
    if resume_from is not None:
        trainer.load_checkpoint(resume_from)
        if announce and dist.is_main:
            announce(f"resuming run {record['run_id']} ({cfg.method} on {cfg.data.dataset}) at step "
                     f"{trainer.state.step} from {resume_from.name}")
        record["training"]["resumes"].append({"at_step": trainer.state.step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    record["status"] = "running"
    record["message"] = None
    if dist.enabled:
        record["distributed"] = {"world_size": dist.world, "backend": "nccl" if device.type == "cuda" else "gloo",
                                 "per_rank_batch": cfg.data.batch_size,
                                 "global_batch": cfg.data.batch_size * dist.world}
    if main:
        save_record(run_dir, record)
    try:
        trainer.fit()
    except (InterruptedRun, DivergenceError) as exc:
        record["message"] = str(exc)
        if main:
            save_record(run_dir, record)
        raise
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        record["message"] = f"aborted; continue from the last checkpoint with: bench run --resume {run_dir.name}"
        if main:
            save_record(run_dir, record)
        raise InterruptedRun(record["message"])
    if dist.enabled:
        record["distributed"]["ranks_in_sync"] = D.parameters_in_sync(model, dist)
    trainer.on_update(trainer.state, "done")
    if not main:
        D.barrier(dist)  # wait for rank 0's evaluation, then leave
        return RunResult(record["run_id"], run_dir, record)
    if cfg.eval.enabled and cfg.eval.checkpoint == "best":
        best = run_dir / "checkpoints" / "best.pt"
        if best.is_file():
            from bench import checkpoint as ckpt_io

            model.load_state_dict(ckpt_io.load(best, expect_digest=trainer.config_digest)["model"])
            record["evaluated_checkpoint"] = {**trainer.state.best, "checkpoint": "checkpoints/best.pt"}
        else:  # training ended before the first validation
            record["evaluated_checkpoint"] = {"checkpoint": "checkpoints/last.pt", "step": trainer.state.step,
                                              "note": "no validation ran, so the final weights were evaluated"}
    elif cfg.eval.enabled:
        record["evaluated_checkpoint"] = {"checkpoint": "checkpoints/last.pt", "step": trainer.state.step}
    if cfg.eval.enabled:
        try:
            evaluate_run_model(model, data, cfg, device, run_dir, record, show_progress)
        except KeyboardInterrupt:  # Ctrl-C during a (long) evaluation: the trained weights are checkpointed
            record["status"] = "interrupted"
            record["message"] = f"interrupted during the evaluation; finish it with: bench run --resume {run_dir.name}"
            save_record(run_dir, record)
            raise InterruptedRun(record["message"])
    record["status"] = "complete"
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t = record["timings"]
    steps = record["training"]["total_steps"]
    t["images_per_second"] = round(steps * cfg.data.batch_size * dist.world / max(t.get("train_seconds", 0), 1e-9), 1)
    save_record(run_dir, record)
    D.barrier(dist)
    return RunResult(record["run_id"], run_dir, record)


def evaluate_run_model(model, data, cfg: RunConfig, device, run_dir: Path, record: dict, show_progress: bool,
                       protocol: str | None = None, n_examples: int | None = None, metrics: list[str] | None = None):
    """Evaluate ``model`` with a protocol and merge the results into ``record`` (and save it)."""
    from metrics import EvalContext, evaluate

    proto = protocol or cfg.eval.protocol
    # the run config lets generative metrics draw samples with the run's own sampler
    ctx = EvalContext(device=device, batch_size=cfg.eval.batch_size, seed=cfg.seed, out_dir=run_dir,
                      show_progress=show_progress,
                      extra={"cfg": cfg, "run_dir": str(run_dir), "samples": None, "weights": None})
    t0 = time.perf_counter()
    skipped: dict[str, str] = {}
    results = evaluate(model, data, proto, n_examples or cfg.eval.n_examples, ctx, metrics, skipped=skipped)
    for name, why in skipped.items():  # optional metrics whose inputs are missing (e.g. FID weights)
        print(f"skipped {name}: {why}", file=sys.stderr)
    if skipped:
        record.setdefault("evaluation_skipped", {})[proto] = skipped
    record["evaluations"].setdefault(proto, {}).update(results)
    record["timings"]["eval_seconds"] = round(record["timings"].get("eval_seconds", 0) + time.perf_counter() - t0, 3)
    save_record(run_dir, record)
    return results


def _prepare_data_ranked(cfg: RunConfig, dist: D.DistInfo):
    """Rank 0 loads first (it may generate or download and cache the files), then the others."""
    if dist.is_main:
        data = prepare_data(cfg)
    D.barrier(dist)
    if not dist.is_main:
        data = prepare_data(cfg)
    return data


def start_run(cfg: RunConfig, out: str | Path = "results", show_progress: bool = True,
              announce: Callable[[str], None] | None = None) -> RunResult:
    """Train and evaluate a new run. ``announce`` receives one line naming the run once it exists."""
    dist, device_name = D.init(cfg.device)
    device = resolve_device(device_name)
    data = _prepare_data_ranked(cfg, dist)  # fails before anything is written if the data is missing
    built = _build(cfg, data, device)  # so do a bad architecture (e.g. wrn depth) and method setup
    for spec in built[1].batch_specs():  # every batch of a step must fit the training set
        check_batch_fits(spec.batch_size or cfg.data.batch_size, dist.world, data.x_train.shape[0],
                         spec.batch_size_setting)
    run = new_run_dir(out, cfg.method, cfg.data.dataset) if dist.is_main else None
    run_id, run_dir = D.broadcast_object(run, dist)
    record = new_record(run_id, cfg, device, data.summary())
    if dist.is_main:
        save_record(run_dir, record)
        if announce:
            announce(f"run {run_id}: {cfg.method} on {cfg.data.dataset} ({cfg.model.arch}, preset {cfg.preset}, "
                     f"seed {cfg.seed}, {device.type}{f' x{dist.world}' if dist.enabled else ''})")
    return _train_and_evaluate(cfg, data, device, run_dir, record, show_progress, resume_from=None, built=built,
                               dist=dist)


def resume_run(ref: str, out: str | Path = "results", device: str | None = None, show_progress: bool = True,
               checkpoint_path: str | None = None, announce: Callable[[str], None] | None = None) -> RunResult:
    run_dir = resolve_run(ref, out)
    record = load_record(run_dir)
    if record.get("status") == "complete":
        raise BenchError(f"run {record['run_id']} is already complete; start a new run instead of --resume")
    cfg = from_dict(RunConfig, record["config"])
    if device is not None:
        cfg.device = device
    dist, device_name = D.init(cfg.device)
    dev = resolve_device(device_name)
    data = _prepare_data_ranked(cfg, dist)
    ckpt = Path(checkpoint_path) if checkpoint_path else run_dir / "checkpoints" / "last.pt"
    return _train_and_evaluate(cfg, data, dev, run_dir, record, show_progress, resume_from=ckpt, dist=dist,
                               announce=announce)


def load_run_model(run_dir: Path, device: torch.device | None = None, checkpoint_path: str | None = None):
    """(model, cfg, data, record) of a saved run.

    Weights from ``checkpoint_path``, else the run's ``eval.checkpoint`` choice: ``best.pt`` (best
    validation accuracy) when it is ``best`` and that file exists, otherwise ``last.pt``.
    """
    from bench import checkpoint

    record = load_record(run_dir)
    cfg = from_dict(RunConfig, record["config"])
    dev = device or resolve_device(cfg.device)
    data = prepare_data(cfg)
    model = build_model(cfg.model, data.num_classes).to(dev)
    # the digest recorded at training time: new config fields added since then change cfg.digest()
    best = run_dir / "checkpoints" / "best.pt"
    if checkpoint_path:
        path = Path(checkpoint_path)
    elif cfg.eval.checkpoint == "best" and best.is_file():
        path = best
    else:
        path = run_dir / "checkpoints" / "last.pt"
    ckpt = checkpoint.load(path, expect_digest=record.get("config_digest") or cfg.digest())
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, cfg, data, record
