"""``SamplerConfig`` + ``ContrastiveSampler``: the negative-sample source of the JEM family.

A method nests a :class:`SamplerConfig` in its own config (``method.sampler.<key>=...`` on the
command line) and owns one :class:`ContrastiveSampler`, built in ``Method.setup``:

    self.sampler = ContrastiveSampler(self.cfg.sampler, data, device)
    x_hat = self.sampler.draw(model, batch_size)          # [0, 1] images, detached
    state = self.sampler.state_dict()                      # the replay buffer, for checkpoints

All step sizes, noise levels and clamps are on the symmetric [-1, 1] scale (the references'
numbers); ``draw`` converts to and from the [0, 1] pixels models take.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.core.errors import BenchError
from bench.core.timing import region
from bench.sampling.buffer import INITS, ReplayBuffer, fresh_starts
from bench.sampling.gaussians import ClassGaussians
from bench.sampling.kinds import SAMPLERS
from bench.sampling.langevin import MODES, from_sym

REFERENCES = Path(__file__).with_name("references.yaml")


@dataclass
class SamplerConfig:
    """Sampler and replay-buffer settings. Defaults: JEM's SGLD (Grathwohl et al. 2020)."""

    kind: str = "sgld"  # a registered sampler kind: sgld (JEM) | pyld (JEM++) | a plugin's
    steps: int = 20  # SGLD steps; PYLD outer steps (JEM++: 10)
    step_size: float = 1.0  # SGLD alpha; PYLD's optional outer step lr_sgld (JEM++: 0 = off)
    noise_std: float = 0.01  # SGLD sigma; PYLD's noise after the inner steps (JEM++: 0)
    clamp: bool = False  # SGLD: clamp to [-1, 1] after each step (JEM: off); PYLD always clamps
    grad_clamp: float = 0.0  # SGLD: >0 clamps the gradient to +-value (SADA-JEM style); 0 = off
    in_steps: int = 5  # PYLD inner (first-layer-only) steps per outer step
    pyld_lr: float = 0.2  # PYLD inner step size
    eps: float = 1.0  # PYLD gradient clamp (+-eps), not a ball
    fast: bool = True  # PYLD: use the affine-first-layer identity when it holds (same iterates)
    mode: str = "eval"  # model mode while sampling: eval (JEM) | train (JEM++) | keep
    buffer_size: int = 10000  # persistent chains; 0 = no buffer (a fresh start for every draw)
    reinit_freq: float = 0.05  # probability that a drawn entry restarts fresh
    # fresh starts: uniform U(-1, 1) (JEM) | informative class Gaussians (JEM++)
    init: str = "uniform"
    conditional: bool = False  # class-conditional buffer (index y * (size // K) + i)
    fit_augment: bool = True  # informative: fit the Gaussians on augmented images (the reference)
    # informative: noise added before fitting, symmetric scale (reference 0.03)
    fit_noise_std: float = 0.03
    # where Gaussian fits are cached; "" = <data.data_dir>/cache/gaussians; "off" = never
    cache_dir: str = ""

    def __post_init__(self):
        if self.kind not in SAMPLERS:
            raise BenchError(
                f"method.sampler.kind={self.kind!r} is not valid; choose one of: "
                f"{', '.join(SAMPLERS.names())}"
            )
        if self.init not in INITS:
            raise BenchError(
                f"method.sampler.init={self.init!r} is not valid; choose uniform or informative"
            )
        if self.mode not in MODES:
            raise BenchError(
                f"method.sampler.mode={self.mode!r} is not valid; choose eval, train or keep"
            )
        if self.steps < 0 or self.in_steps < 0:
            raise BenchError("method.sampler.steps and method.sampler.in_steps must be >= 0")
        if self.buffer_size < 0:
            raise BenchError(f"method.sampler.buffer_size must be >= 0, got {self.buffer_size}")
        if not 0.0 <= self.reinit_freq <= 1.0:
            raise BenchError(
                f"method.sampler.reinit_freq must lie in [0, 1], got {self.reinit_freq}"
            )
        for name in ("step_size", "noise_std", "grad_clamp", "pyld_lr", "eps", "fit_noise_std"):
            if getattr(self, name) < 0:
                raise BenchError(f"method.sampler.{name} must be >= 0, got {getattr(self, name)}")


def run_sampler(
    cfg: SamplerConfig,
    model: torch.nn.Module,
    xs: torch.Tensor,
    y: torch.Tensor | None = None,
    steps: int | None = None,
    mode: str | None = None,
    trace: dict | None = None,
) -> torch.Tensor:
    """Run ``cfg``'s sampler on symmetric-scale ``xs`` (``steps`` overrides ``cfg.steps``)."""
    n = cfg.steps if steps is None else steps
    mode = cfg.mode if mode is None else mode
    return SAMPLERS.get(cfg.kind).run(cfg, model, xs, y, n, mode, trace)


@cache
def _references() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(REFERENCES.read_text())


def reference_sampler(name: str, **changes: Any) -> SamplerConfig:
    """The sampler settings of reference ``name`` (an entry of ``references.yaml``), with ``changes``."""
    refs = _references()
    if name not in refs:
        raise BenchError(f"unknown reference sampler {name!r}; choose one of: {', '.join(refs)}")
    return SamplerConfig(**{**refs[name], **changes})


def kind_step_settings(kind: str) -> dict[str, Any]:
    """The step settings (``step_fields``) of sampler ``kind``, as its reference entry gives them."""
    entry = SAMPLERS.get(kind)  # an unknown kind: one line naming the known ones
    ref = reference_sampler(entry.reference) if entry.reference else SamplerConfig(kind=kind)
    return {f: getattr(ref, f) for f in entry.step_fields}


def with_kind(cfg: SamplerConfig, kind: str) -> SamplerConfig:
    """``cfg`` with its sampler swapped for ``kind``, taking that kind's reference step settings."""
    if cfg.kind == kind:
        return cfg
    return dataclasses.replace(cfg, kind=kind, **kind_step_settings(kind))


def _match_memory_format(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = getattr(getattr(model, "first_layer", None), "weight", None)
    if (
        x.ndim == 4
        and w is not None
        and w.ndim == 4
        and w.is_contiguous(memory_format=torch.channels_last)
    ):
        return x.contiguous(memory_format=torch.channels_last)
    return x


class ContrastiveSampler:
    """Replay buffer + sampler: ``draw(model, batch_size, y=None)`` returns negative samples in [0, 1]."""

    def __init__(
        self,
        cfg: SamplerConfig,
        data,
        device: torch.device | str = "cpu",
        gaussians: ClassGaussians | None = None,
    ):
        """``data``: the training ImageData (image shape, class count, and the Gaussian fit)."""
        self.cfg = cfg
        self.device = torch.device(device)
        self.image_shape = tuple(data.image_shape)
        self.num_classes = data.num_classes
        self.gaussians = gaussians
        if cfg.init == "informative" and self.gaussians is None:
            self.gaussians = fit_gaussians(cfg, data, self.device)
        self.buffer = None
        if cfg.buffer_size > 0:
            self.buffer = ReplayBuffer(
                cfg.buffer_size,
                self.image_shape,
                self.num_classes,
                init=cfg.init,
                reinit_freq=cfg.reinit_freq,
                conditional=cfg.conditional,
                gaussians=self.gaussians,
                device=self.device,
            )
        self.last: dict[str, torch.Tensor] = {}  # statistics of the latest draw (device tensors)
        self.last_batch_size = 0  # images in the latest draw

    def draw(
        self,
        model: torch.nn.Module,
        batch_size: int,
        y: torch.Tensor | None = None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Draw starts from the buffer, run the sampler, write the results back; returns [0, 1] images.

        ``y``: labels for a conditional draw (sampling ``x | y`` with ``E(x, y)``); needs
        ``conditional=True`` when there is a buffer. The result is detached; it is not clamped
        (an unclamped SGLD chain may leave the range, as in JEM).
        """
        if y is not None:
            y = torch.as_tensor(y, device=self.device).long().view(-1)
            batch_size = y.shape[0]
        if self.buffer is not None:
            x0, idx = self.buffer.sample(batch_size, y)
        else:
            shape, k = self.image_shape, self.num_classes
            x0 = fresh_starts(batch_size, shape, k, self.cfg.init, self.gaussians, y, self.device)
            idx = None
        trace: dict = {}
        with region("sampler"):
            xs = run_sampler(
                self.cfg, model, _match_memory_format(model, x0), y=y, steps=steps, trace=trace
            )
        if idx is not None:
            self.buffer.write(idx, xs)
        self.last = {k: v for k, v in trace.items() if isinstance(v, torch.Tensor)}
        self.last_batch_size = int(x0.shape[0])
        return from_sym(xs)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict() if self.buffer is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state or {}).get("buffer")
        if self.buffer is not None and saved is not None:
            self.buffer.load_state_dict(saved)
        elif (self.buffer is None) != (saved is None):
            raise BenchError(
                "the saved sampler state and this sampler disagree on having a replay buffer; "
                "keep the run's method.sampler.buffer_size"
            )


def fit_gaussians(cfg: SamplerConfig, data, device) -> ClassGaussians:
    """The class Gaussians of ``data`` (an ImageData) as ``cfg`` fits them (cached)."""
    return ClassGaussians.fit_or_load(
        data,
        augment=cfg.fit_augment,
        noise_std=cfg.fit_noise_std,
        cache_dir=cfg.cache_dir,
        device=device,
    )
