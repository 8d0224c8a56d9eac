"""The one training loop every method runs under.

Per step: draw the batch (and any extra independent batches the method asks for) from the
device-resident streams, augment it as batched tensor ops, call ``method.training_step``, sum
the weighted loss terms, take the optimiser step. Around that: the learning-rate schedule,
bf16 autocast and channels_last on CUDA, periodic validation, a progress bar with the live loss
terms, atomic checkpoints, exact resume, a divergence guard (stop or roll back), and Ctrl-C
leaving a resumable run.

Randomness: at the start of every step the global RNGs are seeded from
``(seed, step, rollbacks)``, and data order depends only on ``(seed, epoch)``. A resumed run
therefore replays exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.core.config import RunConfig, check_compile
from bench.core.device import precision, training_precision
from bench.core.errors import BenchError, DivergenceError, InterruptedRun
from bench.core.step import BatchSpec, StepContext, TrainingMethod
from bench.core.timing import region
from bench.data import BatchStream, ImageData, augment_batch, to_float
from bench.data.stream import CROP_PAD
from bench.train import awp, checkpoint, sam
from bench.train import distributed as D
from bench.train.ema import ModelEMA
from bench.train.loggers import RunLoggers


def compile_model(model: torch.nn.Module, mode: str, backend: str = "inductor") -> None:
    """``torch.compile`` the model's forward in place (its state-dict keys stay as they are).

    Calls through ``model(x)`` (training, attacks, the samplers' energies) run the compiled
    graph; ``reduce-overhead`` and ``max-autotune`` add CUDA graphs, which only some methods'
    steps suit (:func:`bench.core.config.check_compile`, checked before a run starts and again in
    :class:`Trainer` with the actual device).
    """
    options = {"backend": backend}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    model.compile(**options)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``train.deterministic``: torch's deterministic algorithms for the block (an op that has none
    fails, naming itself) and no cuDNN autotuning; the previous settings are restored afterwards."""
    if not enabled:
        yield
        return
    was, autotune = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.benchmark = autotune


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt * 104_729 + 12_345) % (2**63 - 1)


def build_optimizer(cfg, params, device: torch.device, fast: bool = True) -> torch.optim.Optimizer:
    """SGD or Adam; on CUDA the fused implementation unless ``fast`` is off."""
    fused = {"fused": True} if fast and device.type == "cuda" else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, **fused
        )
    raise BenchError(f"unknown optimiser {cfg.name!r}; choose sgd or adam")


def lr_factor(cfg, step: int, total_steps: int, steps_per_epoch: int, epochs: float) -> float:
    """Warm-up times decay, a pure function of the step (so resume needs no scheduler state)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        decay = 1.0
    elif cfg.schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    elif cfg.schedule == "step":
        epoch = step / steps_per_epoch
        marks = [m * epochs if m <= 1 else m for m in cfg.milestones]
        decay = cfg.gamma ** sum(epoch >= m for m in marks)
    else:  # validated earlier
        raise BenchError(f"unknown schedule {cfg.schedule!r}")
    return warm * decay


@dataclass
class TrainState:
    step: int = 0
    lr_scale: float = 1.0  # lowered by each divergence rollback
    rollbacks: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    rollback_events: list[dict[str, Any]] = field(default_factory=list)  # survive the reloads
    best: dict[str, Any] = field(default_factory=dict)  # step and accuracy of checkpoints/best.pt
    train_seconds: float = 0.0


def total_steps(t, steps_per_epoch: int) -> int:
    """A run's optimiser steps (``t`` a TrainConfig): ``max_steps`` when set, else its epochs' worth."""
    return t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * steps_per_epoch))


class _Interrupt:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) sets a flag the loop checks between
    steps: the run checkpoints and stops resumable. A second signal aborts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            if (
                old is None
            ):  # the previous handler was installed from C: fall back to Python's default
                old = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, old)
        self._old = {}


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: torch.nn.Module,
        method: TrainingMethod,
        data: ImageData,
        device: torch.device,
        run_dir: Path,
        on_update: Callable[[TrainState, str], None] | None = None,
        show_progress: bool = True,
        dist: D.DistInfo = D.SINGLE,
        config_digest: str | None = None,
    ):
        """``config_digest``: the run's digest as recorded when it started (checkpoints carry it);
        default ``cfg.digest()``. A run resumed under a newer version, whose config has gained
        fields since, keeps its recorded digest. It logs nowhere besides the record until
        :meth:`use_loggers`."""
        self.cfg, self.model, self.method, self.data = cfg, model, method, data
        self.config_digest = config_digest or cfg.digest()
        self.device, self.run_dir = device, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dist = dist
        self._on_update = on_update or (lambda state, event: None)
        self.loggers = RunLoggers([])
        self.show_progress = show_progress and dist.is_main
        t = cfg.train
        self.use_amp = t.fast and (
            device.type == "cuda" and t.amp in ("auto", "bf16") or t.amp == "bf16"
        )
        self.channels_last = t.fast and t.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if t.fast and t.compile != "off":
            # the config was checked with the method before anything was written (bench.run.resolve); this
            # catches the actual device (``auto``, a distributed rank) and trainers built directly
            check_compile(t, device.type, cfg.method, getattr(method, "cuda_graph_safe", False))
            compile_model(self.model, t.compile, t.compile_backend)
        self.batch_specs = method.batch_specs()
        if len(self.batch_specs) != 1 + method.extra_batches:
            raise BenchError(
                f"method {cfg.method!r} declares {method.extra_batches} extra batches but "
                f"{len(self.batch_specs)} batch specs (one for the main batch plus one per extra batch)"
            )
        self.streams = [
            BatchStream(
                data.x_train,
                data.y_train,
                spec.batch_size or cfg.data.batch_size,
                seed=cfg.seed,
                stream=k,
                device=device,
                rank=dist.rank,
                world=dist.world,
                setting=spec.batch_size_setting,
            )
            for k, spec in enumerate(self.batch_specs)
        ]
        self.steps_per_epoch = len(self.streams[0])
        self.total_steps = total_steps(t, self.steps_per_epoch)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.awp_params = awp.perturbed_parameters(model)
        self.optimizer = build_optimizer(cfg.optim, self.params, device, fast=t.fast)
        self.ema = ModelEMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.state = TrainState()
        self._weights = method.loss_weights()
        if dist.rank > 0 and getattr(method, "reseed_for_rank", None) is not None:
            # method.setup ran under the same seed on every rank, so every replay buffer is a copy of
            # rank 0's: each other rank redraws its own (rank 0 keeps a one-process run's)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(step_seed(cfg.seed, -1) + 1_000_003 * dist.rank)
                method.reseed_for_rank(dist.rank)

    def use_loggers(self, loggers: RunLoggers, show_progress: bool) -> None:
        """Log to ``loggers`` from now on (main rank); the progress bar shows when one of them asks for it."""
        if self.dist.is_main:
            self.loggers = loggers
            self.show_progress = show_progress and loggers.shows_progress

    def on_update(self, state: TrainState, event: str) -> None:
        if self.dist.is_main:
            self._on_update(state, event)

    # ------------------------------------------------------------------------------------
    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, x_u8: torch.Tensor, spec: BatchSpec | None = None) -> torch.Tensor:
        d = self.cfg.data
        augment = d.augment if spec is None or spec.augment is None else spec.augment
        noise_std = d.noise_std if spec is None or spec.noise_std is None else spec.noise_std
        x = to_float(x_u8)
        if augment or noise_std > 0:
            x = augment_batch(
                x,
                crop_pad=CROP_PAD if augment else 0,
                pad_mode=d.pad_mode,
                flip=augment and d.flip,
                noise_std=noise_std,
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def set_lr(self, step: int) -> float:
        # fractional milestones are fractions of the run's actual length (train.max_steps wins over epochs)
        lr = (
            self.cfg.optim.lr
            * self.state.lr_scale
            * lr_factor(
                self.cfg.optim,
                step,
                self.total_steps,
                self.steps_per_epoch,
                self.total_steps / self.steps_per_epoch,
            )
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(self, periodic: bool = True) -> Path:
        last = self.ckpt_dir / "last.pt"
        method_states = D.gather_objects(
            self.method.state_dict(), self.dist
        )  # every rank's, on rank 0
        if self.dist.is_main:
            payload = {
                "step": self.state.step,
                "config_digest": self.config_digest,
                "world_size": self.dist.world,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "method": method_states[0],
                "method_per_rank": method_states if self.dist.enabled else None,
                "state": {k: v for k, v in vars(self.state).items()},
            }
            if self.ema is not None:
                payload["ema_model"] = self.ema.state_dict()
            checkpoint.save(last, payload)
            if periodic and self.cfg.train.keep_checkpoints > 0:
                checkpoint.save(self.ckpt_dir / f"step-{self.state.step:08d}.pt", payload)
                checkpoint.prune(self.ckpt_dir, self.cfg.train.keep_checkpoints)
            self.method.on_checkpoint(self.run_dir, self.state.step)
        D.barrier(self.dist)  # the file is complete before any rank may read it
        return last

    def save_best(self, validation: dict[str, Any]) -> None:
        """Keep the weights with the highest validation accuracy so far (``checkpoints/best.pt``)."""
        self.state.best = {
            "step": self.state.step,
            "accuracy": validation["accuracy"],
            "n_examples": validation["n_examples"],
            "checkpoint": "checkpoints/best.pt",
        }
        weights = (
            self.ema.state_dict() if self.ema is not None else self.model.state_dict()
        )  # what was validated
        checkpoint.save(
            self.ckpt_dir / "best.pt",
            {
                "step": self.state.step,
                "config_digest": self.config_digest,
                "model": weights,
                "best": self.state.best,
            },
        )

    def load_checkpoint(self, path: Path) -> None:
        ckpt = checkpoint.load(path, expect_digest=self.config_digest)
        checkpoint.load_weights(self.model, ckpt["model"], path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(
                f"checkpoint {path} holds an optimiser state that does not fit this run's optimiser "
                f"({' '.join(str(exc).split())[:120]}); use a checkpoint written by this run"
            )
        saved_world = ckpt.get("world_size", 1)
        if saved_world != self.dist.world:
            raise BenchError(
                f"checkpoint {path} was written by {saved_world} process(es); resume it with "
                f"--nproc {saved_world} (this run has {self.dist.world})"
            )
        if self.ema is not None:
            if "ema_model" not in ckpt:
                raise BenchError(
                    f"checkpoint {path} holds no EMA weights but this run keeps them (train.ema_decay="
                    f"{self.cfg.train.ema_decay}); use a checkpoint written by this run"
                )
            self.ema.load_state_dict(ckpt["ema_model"])
        per_rank = ckpt.get("method_per_rank")
        self.method.load_state_dict(
            per_rank[self.dist.rank] if per_rank else ckpt.get("method", {})
        )
        saved = ckpt["state"]
        self.state = TrainState(**{k: saved[k] for k in vars(TrainState()) if k in saved})
        not_restored = checkpoint.set_rng_state(ckpt["rng"])
        if not_restored and self.dist.is_main:
            print(f"resume from {path.name}: {not_restored}", file=sys.stderr)

    # -- evaluation during training ---------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        if self.data.x_val is not None:
            x, y, split = self.data.x_val, self.data.y_val, "val"
        else:
            x, y, split = self.data.x_test, self.data.y_test, "test"
        n = min(self.cfg.train.eval_examples, x.shape[0])
        x, y = x[:n], y[:n]
        was = self.model.training
        self.model.eval()
        correct, loss = 0, 0.0
        # with EMA on, the averaged weights are the model that is validated (and kept as best.pt)
        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            for i in range(0, n, self.cfg.eval.batch_size):
                xb = to_float(x[i : i + self.cfg.eval.batch_size].to(self.device))
                yb = y[i : i + self.cfg.eval.batch_size].to(self.device)
                with self.autocast():
                    logits = self.model(xb).float()
                correct += int((logits.argmax(1) == yb).sum())
                loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        self.model.train(was)
        return {"split": split, "n_examples": n, "accuracy": correct / n, "loss": loss / n}

    # -- the loop ---------------------------------------------------------------------------
    def _guard(
        self, sums: dict[str, torch.Tensor], maxabs: dict[str, torch.Tensor], count: int
    ) -> dict[str, float] | str:
        """Read accumulated terms back from the device; return their means or a divergence reason."""
        sums, maxabs = D.reduce_logged(sums, maxabs, count, self.dist)
        means = {k: float(v) / count for k, v in sums.items()}
        peaks = {k: float(v) for k, v in maxabs.items()}
        bound = self.cfg.train.divergence_bound
        for k in means:
            if not math.isfinite(means[k]) or not math.isfinite(peaks[k]):
                return f"non-finite {k} near step {self.state.step}"
            if peaks[k] > bound:
                return (
                    f"{k} exploded to {peaks[k]:.3g} (> train.divergence_bound={bound:g}) "
                    f"near step {self.state.step}"
                )
        return means

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimiser step at global step ``step`` (the learning rate is set by the caller).

        Returns the loss and every term the method returned, detached, still on the device
        (no host synchronisation).
        """
        epoch, index = divmod(step, self.steps_per_epoch)
        torch.manual_seed(
            step_seed(self.cfg.seed, step, self.state.rollbacks) + 1_000_003 * self.dist.rank
        )
        x_u8, y = self.streams[0].batch(epoch, index)
        x = self.prepare(x_u8, self.batch_specs[0])
        # each extra stream cycles through its own epochs (its batch size may differ from the main one's)
        extra = [
            (self.prepare(xe, spec), ye)
            for (xe, ye), spec in zip(
                (s.batch(*divmod(step, len(s))) for s in self.streams[1:]), self.batch_specs[1:]
            )
        ]
        ctx = StepContext(
            step=step,
            epoch=epoch,
            device=self.device,
            num_classes=self.data.num_classes,
            autocast=self.autocast,
            extra=extra,
            data=self.data,
            steps_per_epoch=self.steps_per_epoch,
        )
        terms = self.method.training_step(self.model, x, y, ctx)
        loss = self._total_loss(terms)
        opt = self.cfg.optim
        with region("update"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            D.average_gradients(self.params, self.dist)
        if opt.sam_rho > 0:
            # SAM / ASAM: the gradient again at w + e; the optimiser then steps from w
            with region("sam"):
                moves = sam.perturb(
                    self.params, opt.sam_rho, sam.is_adaptive(opt.sam_adaptive, opt.sam_rho)
                )
                self._gradient_at_perturbed_weights(x, y, ctx)
                sam.restore(self.params, moves)
        awp_moves = None
        if awp.active(opt.awp_gamma, opt.awp_warmup_epochs, ctx.epoch_progress):
            # AWP: the gradient at w + v (per-layer relative step along the first gradient); the
            # optimiser steps there, then v is removed
            with region("awp"):
                awp_moves = awp.perturb(self.awp_params, opt.awp_gamma)
                self._gradient_at_perturbed_weights(x, y, ctx)
        with region("update"):
            if opt.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), opt.grad_clip)
            self.optimizer.step()
            D.broadcast_buffers(
                self.model, self.dist
            )  # rank 0's batch-norm statistics, as DDP does
            if awp_moves is not None:
                awp.restore(awp_moves)
            if self.ema is not None:
                self.ema.update(self.model)
        return {"loss": loss.detach(), **{k: self._logged(v) for k, v in terms.items()}}

    def _gradient_at_perturbed_weights(
        self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext
    ) -> None:
        """SAM's and AWP's second pass: the method's loss again, at the weights as they now are, on
        the first pass's sampled and adversarial inputs (``ctx.reuse``), with batch-norm running
        statistics frozen (the first pass updated them); its gradient replaces the first one."""
        ctx.sam_pass = True
        with sam.frozen_batchnorm_stats(self.model):  # statistics put back after the backward
            loss = self._total_loss(self.method.training_step(self.model, x, y, ctx))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        D.average_gradients(self.params, self.dist)

    def _logged(self, value: torch.Tensor | float) -> torch.Tensor:
        """A returned term as a float32 tensor on the training device: the flush stacks the terms
        into one tensor for the ranks' all-reduce, which needs one device. A Python number becomes
        a tensor there; a tensor a plugin made elsewhere (e.g. on the CPU) is moved."""
        if isinstance(value, torch.Tensor):
            return value.detach().float().to(self.device)
        return torch.tensor(float(value), device=self.device)

    def _total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self._weights if k not in terms]
        if missing:
            raise BenchError(
                f"method {self.cfg.method!r} returned no loss term(s) {missing}; it returned {sorted(terms)}"
            )
        return sum(w * terms[k].float() for k, w in self._weights.items() if w != 0)

    @property
    def epochs_done(self) -> float:
        return round(self.state.step / self.steps_per_epoch, 4)

    def _progress_bar(self):
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.state.step,
            disable=not self.show_progress,
            desc=self.cfg.method,
            unit="step",
            dynamic_ncols=True,
        )

    def fit(self) -> TrainState:
        cfg, t = self.cfg, self.cfg.train
        self.model.train()
        if not (self.ckpt_dir / "last.pt").is_file():
            self.save_checkpoint(periodic=False)  # a good state to fall back to from step 0
        bar = self._progress_bar()
        sums: dict[str, torch.Tensor] = {}
        maxabs: dict[str, torch.Tensor] = {}
        count, t_window, lr = 0, time.perf_counter(), 0.0
        eval_every_steps = (
            max(1, round(t.eval_every * self.steps_per_epoch)) if t.eval_every > 0 else 0
        )
        # TF32 and cuDNN autotuning set explicitly (train.tf32, the fast path), as the record states them
        with (
            precision(training_precision(t)),
            deterministic_algorithms(t.deterministic),
            _Interrupt() as interrupt,
        ):
            while self.state.step < self.total_steps:
                lr = self.set_lr(self.state.step)
                logged = self.train_step(self.state.step)
                self.state.step += 1
                count += 1
                bar.update(1)  # every step, reading nothing back from the device
                for k, v in logged.items():
                    v = v.mean() if v.ndim else v
                    sums[k] = sums[k] + v if k in sums else v.clone()
                    maxabs[k] = torch.maximum(maxabs[k], v.abs()) if k in maxabs else v.abs()
                done = self.state.step >= self.total_steps
                at_ckpt = t.checkpoint_every > 0 and self.state.step % t.checkpoint_every == 0
                at_eval = eval_every_steps and self.state.step % eval_every_steps == 0
                # with several ranks, every rank must flush at the same steps (collectives inside)
                if (
                    count >= t.log_every
                    or done
                    or at_ckpt
                    or at_eval
                    or (interrupt.requested and not self.dist.enabled)
                ):
                    stop = D.any_rank(interrupt.requested, self.dist, self.device)
                    result = self._guard(sums, maxabs, count)
                    if isinstance(result, str):
                        bar.close()
                        self._diverged(result)
                        sums, maxabs, count = {}, {}, 0
                        bar = self._progress_bar()
                        continue
                    elapsed = time.perf_counter() - t_window
                    self.state.train_seconds += elapsed
                    entry = {
                        "step": self.state.step,
                        "epoch": self.epochs_done,
                        "lr": lr,
                        **{k: round(v, 6) for k, v in result.items()},
                        # all ranks together (each trains data.batch_size images a step), as
                        # the record's timings.images_per_second
                        "images_per_s": round(
                            count * cfg.data.batch_size * self.dist.world / max(elapsed, 1e-9), 1
                        ),
                    }
                    self.state.history.append(entry)
                    self.loggers.scalars(self.state.step, entry)
                    bar.set_postfix(
                        {
                            k: f"{v:.3g}"
                            for k, v in result.items()
                            if k in self._weights or k == "loss"
                        }
                    )
                    sums, maxabs, count, t_window = {}, {}, 0, time.perf_counter()
                    if at_eval and self.dist.is_main:
                        v = self.validate()
                        v.update(step=self.state.step, epoch=self.epochs_done)
                        self.state.validation.append(v)
                        if v["split"] == "val" and v["accuracy"] > self.state.best.get(
                            "accuracy", -1.0
                        ):
                            self.save_best(v)
                        self.loggers.validation(self.state.step, v)
                    if at_ckpt or done or stop:
                        self.save_checkpoint(periodic=not done)
                        self.loggers.images(
                            self.state.step,
                            {
                                name: self.run_dir / rel
                                for name, rel in self.method.artifacts().items()
                                if str(rel).endswith(".png")
                            },
                        )
                        self.on_update(self.state, "checkpoint")
                        t_window = time.perf_counter()
                    if stop and not done:
                        bar.close()
                        self.on_update(self.state, "interrupted")
                        raise InterruptedRun(
                            f"interrupted at step {self.state.step}/{self.total_steps}; continue with: "
                            f"bench run --resume {self.run_dir.name}"
                        )
        bar.close()
        return self.state

    def _diverged(self, reason: str) -> None:
        t = self.cfg.train
        last = self.ckpt_dir / "last.pt"
        if t.on_divergence == "rollback" and self.state.rollbacks < t.max_rollbacks:
            bad_step = self.state.step
            rollbacks, scale = self.state.rollbacks + 1, self.state.lr_scale * t.rollback_lr_factor
            events = list(self.state.rollback_events)
            self.load_checkpoint(last)
            self.state.rollbacks, self.state.lr_scale = rollbacks, scale
            event = {
                "at_step": bad_step,
                "to_step": self.state.step,
                "reason": reason,
                "lr_scale": scale,
                "reseed": rollbacks,
            }
            self.state.rollback_events = events + [event]
            self.loggers.rollback(bad_step, self.state.step)
            self.on_update(self.state, "rollback")
            if self.dist.is_main:
                print(
                    f"divergence: {reason}; rolled back to step {self.state.step}, learning rate x{scale:g}, "
                    "reseeded",
                    file=sys.stderr,
                )
            return
        self.on_update(self.state, "diverged")
        hint = (
            "set --on-divergence rollback, lower optim.lr"
            if t.on_divergence == "stop"
            else f"rolled back {self.state.rollbacks} times already (train.max_rollbacks); lower optim.lr"
        )
        raise DivergenceError(
            f"training diverged: {reason}; last good checkpoint kept at {last} ({hint})"
        )
