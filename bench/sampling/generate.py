"""Samples from any trained run: every classifier is an energy model, ``E(x) = -logsumexp f(x)``.

``make_sample_fn(model, cfg, device)`` returns ``fn(n, y=None) -> (n, C, H, W)`` float images in
[0, 1]. Runs whose method config nests a ``sampler`` section (the JEM family, EB-JDAT) sample
with their own settings; any other run (``ce``, ``pgd-at``, ``trades``, ...) uses
:data:`GENERIC_SAMPLER` (SGLD with JEM's step size and noise, clamped to the image range, from
fresh class-Gaussian starts). Chains start fresh (``steps`` defaults to 100, the step count of
JEM's evaluation script for samples from scratch) or, with ``buffer_state``, from a saved replay
buffer (``steps`` defaults to 0: the buffer itself, as the authors evaluate it).

The model is left as it was: its mode is restored, and for samplers that run in train mode
(JEM++) the batch-norm running statistics are restored after each call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import torch

from bench.core.config import from_dict
from bench.core.errors import BenchError
from bench.data import load_run_data
from bench.models.base import energy_from_logits
from bench.sampling.buffer import fresh_starts
from bench.sampling.gaussians import ClassGaussians
from bench.sampling.kinds import SAMPLERS
from bench.sampling.langevin import from_sym, model_mode
from bench.sampling.sampler import SamplerConfig, fit_gaussians, run_sampler, with_kind

FRESH_STEPS = 100  # JEM's eval_wrn_ebm.py --n_sample_steps default for samples from scratch

GENERIC_SAMPLER = SamplerConfig(
    kind="sgld",
    steps=FRESH_STEPS,
    step_size=1.0,
    noise_std=0.01,
    clamp=True,
    mode="eval",
    buffer_size=0,
    init="informative",
)


def run_sampler_config(cfg) -> tuple[SamplerConfig, bool]:
    """``(sampler config, True)`` for runs with their own sampler, else ``(GENERIC_SAMPLER, False)``."""
    section = (cfg.method_cfg or {}).get("sampler")
    if isinstance(section, dict):
        return from_dict(SamplerConfig, section), True
    return GENERIC_SAMPLER, False


@contextlib.contextmanager
def preserved_buffers(model: torch.nn.Module) -> Iterator[None]:
    """Restore every buffer (batch-norm running statistics, counters) of ``model`` afterwards."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


@dataclass(eq=False)
class SampleFn:
    """``fn(n, y=None)``: ``n`` samples in [0, 1]; ``y`` an int class or (n,) labels for ``x | y``.

    After each call ``stats`` holds ``n``, ``steps`` and the mean energies of the starts and of
    the results (in the sampler's model mode; ``E(x, y)`` for a conditional call).
    """

    model: torch.nn.Module
    sampler: SamplerConfig
    device: torch.device
    _: KW_ONLY
    steps: int
    num_classes: int
    image_shape: tuple[int, ...]
    gaussians: ClassGaussians | None
    buffer: torch.Tensor | None
    buffer_conditional: bool
    batch_size: int
    track_energy: bool
    show_progress: bool = False  # a progress bar over the sampler's steps (stderr)
    stats: dict[str, Any] = field(default_factory=dict, init=False)
    # predicted classes of the saved buffer (for x|y)
    _pred: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.device, self.image_shape = torch.device(self.device), tuple(self.image_shape)

    # -- starts ------------------------------------------------------------------------------
    def _labels(self, n: int, y) -> torch.Tensor | None:
        if y is None:
            return None
        y = torch.as_tensor(y, device=self.device).long().view(-1)
        if y.numel() == 1:
            y = y.expand(n).clone()
        if y.shape[0] != n:
            raise BenchError(f"got {y.shape[0]} labels for {n} samples; pass one class or n labels")
        if (y < 0).any() or (y >= self.num_classes).any():
            raise BenchError(f"class labels must lie in [0, {self.num_classes - 1}]")
        return y

    def _predicted(self) -> torch.Tensor:
        if self._pred is None:
            preds = []
            with torch.no_grad(), model_mode(self.model, "eval"):
                for i in range(0, self.buffer.shape[0], self.batch_size):
                    preds.append(
                        self.model(
                            from_sym(self.buffer[i : i + self.batch_size].to(self.device))
                        ).argmax(1)
                    )
            self._pred = torch.cat(preds)
        return self._pred

    @staticmethod
    def _choose(pool: torch.Tensor, n: int, device) -> torch.Tensor:
        """``n`` entries of ``pool``: distinct while the pool lasts, then with replacement."""
        if n <= pool.shape[0]:
            return pool[torch.randperm(pool.shape[0], device=pool.device)[:n]]
        return pool[torch.randint(0, pool.shape[0], (n,), device=pool.device)]

    def starts(self, n: int, y: torch.Tensor | None) -> torch.Tensor:
        if self.buffer is None:
            shape, k, init = self.image_shape, self.num_classes, self.sampler.init
            return fresh_starts(n, shape, k, init, self.gaussians, y, self.device)
        size = self.buffer.shape[0]
        if y is None:
            idx = self._choose(torch.arange(size), n, self.device)
        else:
            idx = torch.empty(n, dtype=torch.long)
            y_cpu = y.cpu()
            for k in torch.unique(y_cpu).tolist():
                where = (y_cpu == k).nonzero().squeeze(1)
                if self.buffer_conditional:
                    per = size // self.num_classes
                    pool = torch.arange(k * per, (k + 1) * per)
                else:  # an unconditional buffer: the entries the model classifies as k
                    pool = (self._predicted().cpu() == k).nonzero().squeeze(1)
                    if pool.numel() == 0:
                        raise BenchError(
                            f"no entry of the saved buffer is classified as class {k}; "
                            "use --buffer fresh for this class"
                        )
                idx[where] = self._choose(pool, where.shape[0], self.device)
        return self.buffer[idx].to(self.device).float()

    # -- sampling ----------------------------------------------------------------------------
    def _energy(self, xs: torch.Tensor, y: torch.Tensor | None, mode: str) -> torch.Tensor:
        # in the sampler's mode: the energy it descends (batch statistics for a train-mode sampler)
        with torch.no_grad(), model_mode(self.model, mode):
            return energy_from_logits(self.model(from_sym(xs)), y)

    def __call__(self, n: int, y=None) -> torch.Tensor:
        if int(n) < 1:
            raise BenchError(f"the number of samples must be positive, got {n}")
        n = int(n)
        y = self._labels(n, y)
        out, e0, e1 = [], [], []
        mode = "eval" if self.sampler.mode == "keep" else self.sampler.mode
        from tqdm.auto import tqdm

        batches = -(-n // self.batch_size)
        bar = tqdm(
            total=batches * self.steps,
            desc=f"{self.sampler.kind} {n} samples",
            unit="step",
            disable=not (self.show_progress and self.steps),
            leave=False,
        )
        trace = {"on_step": lambda: bar.update(1)}  # the built-in kinds tick once per step
        with preserved_buffers(self.model), bar:
            for i in range(0, n, self.batch_size):
                yb = None if y is None else y[i : i + self.batch_size]
                x0 = self.starts(min(self.batch_size, n - i), yb)
                if self.track_energy:
                    e0.append(self._energy(x0, yb, mode))
                xs = (
                    run_sampler(
                        self.sampler, self.model, x0, y=yb, steps=self.steps, mode=mode, trace=trace
                    )
                    if self.steps
                    else x0
                )
                if self.track_energy:
                    e1.append(self._energy(xs, yb, mode))
                out.append(from_sym(xs).clamp_(0.0, 1.0))
            bar.refresh()  # the final count is shown even when the steps came faster than tqdm redraws
        self.stats = {"n": n, "steps": self.steps, "sampler": self.sampler.kind}
        if self.track_energy:
            self.stats["energy_start"] = float(torch.cat(e0).mean())
            self.stats["energy_end"] = float(torch.cat(e1).mean())
        return torch.cat(out)


def make_sample_fn(
    model,
    cfg,
    device,
    *,
    steps: int | None = None,
    sampler: str | SamplerConfig | None = None,
    buffer_state: dict | None = None,
    data=None,
    batch_size: int = 256,
    track_energy: bool = True,
    show_progress: bool = False,
) -> SampleFn:
    """A sampling function for the run with config ``cfg`` (a RunConfig) and trained ``model``.

    ``steps``: sampler steps per chain (default 100 from fresh starts, 0 from a saved buffer).
    ``sampler``: a sampler kind (``"sgld"``, ``"pyld"``, a plugin's) swaps the run's sampler kind
    (with that kind's reference step settings), a :class:`SamplerConfig` replaces it. ``buffer_state``: a replay-buffer
    state (``ReplayBuffer.state_dict()``, e.g. ``ckpt["method"]["sampler"]["buffer"]``) to start
    from instead of fresh starts. ``data``: the run's ImageData, loaded when an informative
    start needs it and it is not given.
    """
    device = torch.device(device)
    scfg, _own = run_sampler_config(cfg)
    if isinstance(sampler, SamplerConfig):
        scfg = sampler
    elif sampler is not None:
        if sampler not in SAMPLERS:
            raise BenchError(
                f"sampler {sampler!r} is not valid; choose one of: {', '.join(SAMPLERS.names())}"
            )
        scfg = with_kind(scfg, sampler)
    if steps is not None and steps < 0:
        raise BenchError(f"steps must be >= 0, got {steps}")
    buffer = None if buffer_state is None else buffer_state["x"]
    conditional = bool((buffer_state or {}).get("conditional", False))
    if steps is None:
        steps = FRESH_STEPS if buffer is None else 0
    gaussians = None
    if buffer is None and data is None:  # fresh starts need the image shape (maybe the Gaussians)
        data = load_run_data(cfg)
    if buffer is None and scfg.init == "informative":
        gaussians = fit_gaussians(scfg, data, device)
    num_classes = getattr(model, "num_classes", None) or (
        data.num_classes if data is not None else None
    )
    if num_classes is None:
        raise BenchError("cannot tell the number of classes of this model; pass data=")
    image_shape = tuple(buffer.shape[1:]) if buffer is not None else tuple(data.image_shape)
    return SampleFn(
        model,
        scfg,
        device,
        steps=steps,
        num_classes=num_classes,
        image_shape=image_shape,
        gaussians=gaussians,
        buffer=buffer,
        buffer_conditional=conditional,
        batch_size=batch_size,
        track_energy=track_energy,
        show_progress=show_progress,
    )
