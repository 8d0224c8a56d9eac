"""The one training loop every method runs under (docs/architecture.md, "`bench run`, step by
step"). Per step it draws the method's batches, augments them as tensor ops, calls
``method.training_step``, sums the weighted terms and steps the optimiser; everything around
that (the second pass of SAM and AWP, EMA, checkpoints, the divergence guard, loggers, the
progress bar) is a hook (:mod:`bench.train.hooks`) the loop calls at fixed points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.core.config import RunConfig, check_compile
from bench.core.device import precision, training_precision
from bench.core.errors import BenchError, InterruptedRun
from bench.core.step import StepContext, TrainingMethod
from bench.core.timing import region
from bench.data import ImageData
from bench.train import distributed as D
from bench.train.awp import AWPPass
from bench.train.batches import StepBatches
from bench.train.checkpoint import Checkpoints
from bench.train.divergence import DivergenceGuard, LogWindow
from bench.train.ema import ModelEMA
from bench.train.hooks import Hook, ProgressBar, call
from bench.train.loggers import RunLoggers
from bench.train.sam import SAMPass, frozen_batchnorm_stats
from bench.train.settings import (
    build_optimizer,
    compile_model,
    deterministic_algorithms,
    interrupt_requests,
    lr_factor,
    step_seed,
    total_steps,
)
from bench.train.validation import Validation


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
        """``config_digest``: the run's digest as recorded when it started (checkpoints carry it;
        a run resumed under a newer version keeps it), default ``cfg.digest()``. It logs nowhere
        besides the record until :meth:`use_loggers`."""
        self.cfg, self.model, self.method, self.data = cfg, model, method, data
        self.config_digest = config_digest or cfg.digest()
        self.device, self.run_dir = device, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dist = dist
        self._on_update = on_update or (lambda state, event: None)
        t, opt = cfg.train, cfg.optim
        self.use_amp = t.fast and (
            device.type == "cuda" and t.amp in ("auto", "bf16") or t.amp == "bf16"
        )
        self.channels_last = t.fast and t.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if t.fast and t.compile != "off":
            # the config was checked with the method before anything was written (bench.run.resolve);
            # this catches the actual device (``auto``, a distributed rank) and trainers built directly
            check_compile(t, device.type, cfg.method, getattr(method, "cuda_graph_safe", False))
            compile_model(self.model, t.compile, t.compile_backend)
        self.batches = StepBatches(cfg, method, data, device, dist, self.channels_last)
        self.steps_per_epoch = len(self.batches.streams[0])
        self.total_steps = total_steps(t, self.steps_per_epoch)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(opt, self.params, device, fast=t.fast)
        self.ema = ModelEMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.state = TrainState()
        self.loss_weights = method.loss_weights()
        self.checkpoints, self.loggers = Checkpoints(), RunLoggers([])
        self.progress = ProgressBar(show_progress and dist.is_main)
        every = max(1, round(t.eval_every * self.steps_per_epoch)) if t.eval_every > 0 else 0
        self.validation = Validation(every)
        # in this order: SAM's pass before AWP's, AWP's restore before the EMA update, the best
        # checkpoint before the loggers see a validation, the bar closed before a rollback's note
        optional = (
            SAMPass(opt) if opt.sam_rho > 0 else None,
            AWPPass(model, opt) if opt.awp_gamma > 0 else None,
            self.ema,
        )
        self.hooks: list[Hook] = [
            *(hook for hook in optional if hook is not None),
            self.checkpoints,
            self.progress,
            self.loggers,
            self.validation,
            DivergenceGuard(),
        ]
        if dist.rank > 0 and getattr(method, "reseed_for_rank", None) is not None:
            # method.setup ran under the same seed on every rank, so every replay buffer is a copy of
            # rank 0's: each other rank redraws its own (rank 0 keeps a one-process run's)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(step_seed(cfg.seed, -1) + 1_000_003 * dist.rank)
                method.reseed_for_rank(dist.rank)

    def use_loggers(self, loggers: RunLoggers, show_progress: bool) -> None:
        """Log to ``loggers`` from now on (main rank); the progress bar shows when one of them asks for it."""
        if self.dist.is_main:
            self.hooks[self.hooks.index(self.loggers)] = loggers
            self.loggers = loggers
            self.progress.show = show_progress and loggers.shows_progress

    def on_update(self, state: TrainState, event: str) -> None:
        if self.dist.is_main:
            self._on_update(state, event)

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def set_lr(self, step: int) -> float:
        # fractional milestones are fractions of the run's actual length (train.max_steps wins over epochs)
        epochs = self.total_steps / self.steps_per_epoch
        factor = lr_factor(self.cfg.optim, step, self.total_steps, self.steps_per_epoch, epochs)
        lr = self.cfg.optim.lr * self.state.lr_scale * factor
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def save_checkpoint(self, periodic: bool = True) -> Path:
        return self.checkpoints.save(self, periodic)

    def load_checkpoint(self, path: Path) -> None:
        self.checkpoints.load(self, path)

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        """One optimiser step at global step ``step`` (the caller sets the learning rate); the loss
        and every term the method returned, detached, on the device (no host synchronisation)."""
        seed = step_seed(self.cfg.seed, step, self.state.rollbacks) + 1_000_003 * self.dist.rank
        torch.manual_seed(seed)
        x, y, extra = self.batches.draw(step)
        ctx = StepContext(
            step=step,
            epoch=step // self.steps_per_epoch,
            device=self.device,
            num_classes=self.data.num_classes,
            autocast=self.autocast,
            extra_batches=extra,
            data=self.data,
            steps_per_epoch=self.steps_per_epoch,
        )
        terms = self.method.training_step(self.model, x, y, ctx)
        loss = self._total_loss(terms)
        with region("update"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            D.average_gradients(self.params, self.dist)
        call(self.hooks, "before_update", self, x, y, ctx)
        with region("update"):
            if self.cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            D.broadcast_buffers(self.model, self.dist)  # rank 0's batch-norm statistics, as DDP
            call(self.hooks, "after_update", self)
        return {"loss": loss.detach(), **{k: self._logged(v) for k, v in terms.items()}}

    def second_pass(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> None:
        """SAM's and AWP's second pass: the method's loss again, at the weights as they now are, on
        the first pass's sampled and adversarial inputs (``ctx.reuse``), with batch-norm running
        statistics frozen (the first pass updated them); its gradient replaces the first one."""
        ctx.second_pass = True
        with frozen_batchnorm_stats(self.model):  # statistics put back after the backward
            loss = self._total_loss(self.method.training_step(self.model, x, y, ctx))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        D.average_gradients(self.params, self.dist)

    def _logged(self, value: torch.Tensor | float) -> torch.Tensor:
        """A returned term as a float32 tensor on the training device, where the ranks' all-reduce
        stacks the terms: a Python number becomes one, a tensor made elsewhere is moved."""
        if isinstance(value, torch.Tensor):
            return value.detach().float().to(self.device)
        return torch.tensor(float(value), device=self.device)

    def _total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in self.loss_weights if k not in terms]
        if missing:
            raise BenchError(
                f"method {self.cfg.method!r} returned no loss term(s) {missing}; it returned {sorted(terms)}"
            )
        return sum(w * terms[k].float() for k, w in self.loss_weights.items() if w != 0)

    @property
    def epochs_done(self) -> float:
        return round(self.state.step / self.steps_per_epoch, 4)

    def fit(self) -> TrainState:
        """Train from ``state.step`` to the end; raises InterruptedRun (resumable) on a signal."""
        t = self.cfg.train
        self.model.train()
        window, lr = LogWindow(), 0.0
        call(self.hooks, "on_fit_start", self)
        # TF32 and cuDNN autotuning set explicitly (train.tf32, the fast path), as the record states them
        with (
            precision(training_precision(t)),
            deterministic_algorithms(t.deterministic),
            interrupt_requests() as interrupt,
            contextlib.ExitStack() as ending,
        ):
            ending.callback(call, self.hooks, "on_fit_end", self)
            while self.state.step < self.total_steps:
                lr = self.set_lr(self.state.step)
                window.add(self.train_step(self.state.step))
                self.state.step += 1
                call(self.hooks, "on_step_end", self)
                step, done = self.state.step, self.state.step >= self.total_steps
                at_ckpt = t.checkpoint_every > 0 and step % t.checkpoint_every == 0
                # with several ranks, every rank must read back at the same steps (collectives)
                asked = interrupt.requested and not self.dist.enabled
                due = window.count >= t.log_every or self.validation.due(step) or asked
                if not (due or done or at_ckpt):
                    continue
                stop = D.any_rank(interrupt.requested, self.dist, self.device)
                if not self._log_window(window, lr):
                    continue  # rolled back
                if at_ckpt or done or stop:
                    call(self.hooks, "on_checkpoint", self, not done)  # periodic unless done
                    self.on_update(self.state, "checkpoint")
                    window.restart_clock()
                if stop and not done:
                    self.on_update(self.state, "interrupted")
                    raise InterruptedRun(
                        f"interrupted at step {step}/{self.total_steps}; continue with: "
                        f"bench run --resume {self.run_dir.name}"
                    )
        return self.state

    def _log_window(self, window: LogWindow, lr: float) -> bool:
        """Read the window back: a line of the history if it is finite (the hooks log it and
        validate), else the divergence hooks (which raise or roll back; False)."""
        means, reason = window.read(self.dist, self.cfg.train.divergence_bound, self.state.step)
        if reason is not None:
            call(self.hooks, "on_divergence", self, reason)
            window.clear()
            return False
        elapsed = window.elapsed()
        self.state.train_seconds += elapsed
        images = window.count * self.cfg.data.batch_size * self.dist.world  # all ranks'
        entry = {
            "step": self.state.step,
            "epoch": self.epochs_done,
            "lr": lr,
            **{k: round(v, 6) for k, v in means.items()},
            "images_per_s": round(images / max(elapsed, 1e-9), 1),
        }
        self.state.history.append(entry)
        window.clear()
        window.restart_clock()
        call(self.hooks, "on_log", self, entry, means)
        return True
