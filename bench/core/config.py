"""The typed run configuration: the schema (one dataclass per section, defaults, choices) and its
validation. A leaf, so anything can load a config (a record's, a checkpoint's) without the plugins;
typing plain values is bench/core/settings.py's job, layering them bench/run/resolve.py's (the
README's "Use" gives the order).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from bench.core.errors import BenchError

# the settings helpers stay importable from here, beside the schema they type
from bench.core.settings import (  # noqa: F401
    check_ranges,
    check_settings,
    coerce,
    deep_merge,
    flatten,
    from_dict,
    parse_seeds,
    parse_set,
    to_dict,
    update_dataclass,
)


@dataclass
class DataConfig:
    dataset: str = "shapes10"
    data_dir: str = "data"  # where CIFAR archives live / are downloaded; shapes10 caches here
    download: bool = True  # try torchvision's download when the files are absent
    val_size: int = 0  # images held out of the training split (chosen by seed) for validation
    train_subset: int = 0  # >0: train on the first N images of the (shuffled) training split
    batch_size: int = 128
    augment: bool = True  # random crop (pad 4) + horizontal flip, as batched tensor ops
    pad_mode: str = "reflect"  # padding for the random crop: reflect (JEM references) | zeros
    flip: bool = True
    noise_std: float = 0.0  # Gaussian data noise in pixel units ([0, 1]); 0.015 = 0.03 on [-1, 1]
    # square image side in pixels: 0 = the dataset's own size (folder:PATH datasets resize to 32 when 0);
    # 32 or 64 resizes folder:PATH datasets; any other dataset must already have images of that size
    image_size: int = 0


@dataclass
class ModelConfig:
    arch: str = "resnet8"
    norm: str = "batch"  # batch | none
    bn_momentum: float = 0.1  # PyTorch convention (JEM family uses 0.9)
    activation: str = "relu"  # relu | leaky_relu (JEM family: leaky 0.2)
    dropout: float = 0.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # normalisation inside the model
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0  # linear warm-up from 0 over this many optimiser steps
    schedule: str = "cosine"  # constant | cosine | step
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step decay, in epochs;
    # values <= 1 are fractions of the run's epochs
    gamma: float = 0.1  # step decay factor
    grad_clip: float = 0.0  # >0: clip the global gradient norm
    # sharpness-aware minimisation around the optimiser (bench/train/sam.py): 0 = off; >0 = its radius rho
    sam_rho: float = 0.0
    # ASAM (perturbation scaled by |w|) or plain SAM: auto = ASAM when sam_rho >= 0.5 (SADA-JEM's rule;
    # ASAM radii are large, SAM's small) | on | off
    sam_adaptive: str = "auto"
    # adversarial weight perturbation (bench/train/awp.py, Wu et al. 2020): 0 = off; >0 = its per-layer
    # relative budget gamma (the paper: 5e-3), one ascent step; not together with SAM
    awp_gamma: float = 0.0
    awp_warmup_epochs: float = 0.0  # plain steps before this many epochs


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = 0  # >0: stop after this many steps (overrides epochs)
    log_every: int = 10  # steps between reading losses back from the device
    checkpoint_every: int = 500  # steps between atomic checkpoints (and one at the end)
    keep_checkpoints: int = 2  # periodic checkpoints (step-N.pt) kept besides last.pt
    eval_every: float = 1.0  # epochs between validation evaluations (0: never)
    eval_examples: int = 1000  # validation images per periodic evaluation
    divergence_bound: float = 1e8  # |loss term| above this counts as divergence
    on_divergence: str = "stop"  # stop | rollback
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 3
    # The fast path, one switch: with fast=false the loop runs eager fp32 in NCHW with the
    # unfused optimiser (the plain path, for debugging numerics); amp, channels_last and compile
    # only act while it is on.
    fast: bool = True
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    channels_last: bool = True
    compile: str = "off"  # torch.compile the model: off | default | reduce-overhead (CUDA graphs) | max-autotune
    compile_backend: str = "inductor"  # torch.compile backend (inductor; aot_eager for debugging)
    # TF32 for fp32 matmuls and convolutions on CUDA GPUs (Ampere and newer) while training; acts only
    # with the fast path on (the plain path is full fp32). Set explicitly, with cuDNN autotuning (on
    # with the fast path unless train.deterministic), and recorded in environment.precision
    tf32: bool = True
    # torch's deterministic algorithms while training (slower on CUDA). Runs are reproducible without
    # it on the CPU; on CUDA some kernels (e.g. scatter-adds in backward) are not unless it is on.
    deterministic: bool = False
    # where training curves go besides record.json (bench/train/loggers): console (progress bar and
    # validation lines), tensorboard (event files under <run>/tensorboard/), csv (history.csv), plugins
    loggers: list[str] = field(default_factory=lambda: ["console", "tensorboard"])
    # >0: keep an exponential moving average of the weights with this decay (e.g. 0.999) and
    # validate, checkpoint and evaluate it (bench/train/ema.py); 0: off
    ema_decay: float = 0.0


@dataclass
class EvalConfig:
    protocol: str = "quick"  # named bundle of metric settings run at the end of `bench run`
    # weights evaluated at the end: final | best (highest validation accuracy)
    checkpoint: str = "final"
    n_examples: int = 1000  # test images for the end-of-run evaluation
    batch_size: int = 256
    enabled: bool = True
    # TF32 in the evaluation's fp32 matmuls and convolutions on CUDA (Ampere and newer): off, so attacks
    # and FID features run in full fp32; true opts in (faster). Each result records the flags it ran under
    tf32: bool = False


@dataclass
class RunConfig:
    method: str = "ce"
    preset: str = "cpu"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method_cfg: dict[str, Any] = field(default_factory=dict)  # the method's own config, resolved

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def digest(self) -> str:
        """Hash of everything that changes the numbers (not the device, not the loggers)."""
        d = self.to_dict()
        d.pop("device", None)
        d["train"].pop("loggers", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


CHOICES = {
    "optim.name": ("sgd", "adam"),
    "optim.schedule": ("constant", "cosine", "step"),
    "train.on_divergence": ("stop", "rollback"),
    "train.amp": ("auto", "bf16", "off"),
    "train.compile": ("off", "default", "reduce-overhead", "max-autotune"),
    "optim.sam_adaptive": ("auto", "on", "off"),
    "model.norm": ("batch", "none"),
    "model.activation": ("relu", "leaky_relu"),
    "data.pad_mode": ("reflect", "zeros"),
    "eval.checkpoint": ("final", "best"),
    "device": ("auto", "cpu", "cuda"),
}


# Every numeric setting's range, written once as the rule its error states: "must be positive",
# "must be >= X", "must lie in [A, B)" (either bracket either side) or "must be A, B or C", a note in
# parentheses aside; a list's rule holds for each value. A "method.*" rule holds for each built-in
# method whose config has the setting (its own checks may be stricter).
NONNEGATIVE = "must be >= 0"
METHOD_NONNEGATIVE = (
    "eps alpha beta start_std eps_warmup_epochs energy_l2 px_weight ce_weight align_weight adv_weight "
    "sampler.steps sampler.step_size sampler.noise_std sampler.in_steps sampler.pyld_lr "
    "sampler.fit_noise_std"
).split()
RANGES = {
    "seed": "must lie in [0, 4294967295]",
    "data.val_size": NONNEGATIVE,
    "data.train_subset": "must be >= 0 (0 = every training image)",
    "data.batch_size": "must be positive",
    "data.noise_std": "is in pixel units and must lie in [0, 1)",
    "data.image_size": "must be 0 (the dataset's own size), 32 or 64",
    "model.bn_momentum": "must lie in [0, 1]",
    "model.dropout": "is a probability and must lie in [0, 1)",
    "model.mean": "must lie in [0, 1]",
    "model.std": "must be positive (each channel's spread on [0, 1] pixels)",
    "optim.lr": "must be positive",
    "optim.momentum": "must lie in [0, 1)",
    "optim.weight_decay": NONNEGATIVE,
    "optim.betas": "must lie in [0, 1)",
    "optim.warmup_steps": NONNEGATIVE,
    "optim.milestones": "must be positive",
    "optim.gamma": "must be positive",
    "optim.grad_clip": "must be >= 0 (0 = no clipping)",
    "optim.sam_rho": "must be >= 0 (0 = no SAM)",
    "optim.awp_gamma": "must be >= 0 (0 = no AWP)",
    "optim.awp_warmup_epochs": NONNEGATIVE,
    "train.epochs": "must lie in [0, 1000000]",
    "train.max_steps": "must be >= 0 (0 = train.epochs decides)",
    "train.log_every": "must be positive",
    "train.checkpoint_every": "must be positive",
    "train.keep_checkpoints": "must be positive",
    "train.eval_every": "must be >= 0 (0 = never)",
    "train.eval_examples": "must be positive",
    "train.divergence_bound": "must be positive",
    "train.rollback_lr_factor": "must lie in (0, 1]",
    "train.max_rollbacks": NONNEGATIVE,
    "train.ema_decay": "must lie in [0, 1) (0 turns EMA off, 0.999 is usual)",
    "eval.n_examples": "must be positive",
    "eval.batch_size": "must be positive",
    # the built-in methods' settings (methods/)
    **{f"method.{name}": NONNEGATIVE for name in METHOD_NONNEGATIVE},
    "method.steps": "must be >= 1",
    "method.attack_steps": "must be >= 0 (0 = method.sampler.in_steps)",
    "method.adv_energy_sign": "must be 1 or -1",
    "method.grid_size": "must be >= 0 (0 = no grid)",
    "method.px_batch_size": "must be >= 0 (0 = data.batch_size)",
    "method.px_noise_std": "must lie in [-1, 1) (< 0 = data.noise_std)",
    "method.sampler.grad_clamp": "must be >= 0 (0 = off)",
    "method.sampler.eps": "must be positive",
    "method.sampler.buffer_size": "must be >= 0 (0 = no buffer)",
    "method.sampler.reinit_freq": "must lie in [0, 1]",
}


def validate(cfg: RunConfig, builtin_method: bool = True) -> None:
    """Refuse, in one line, a value out of the schema (a plugin method checks its own settings)."""
    values = flatten(cfg.to_dict())
    for path, allowed in CHOICES.items():
        value = values[path]
        if value not in allowed and not (path == "device" and str(value).startswith("cuda:")):
            raise BenchError(f"{path}={value!r} is not valid; choose one of: {', '.join(allowed)}")
    check_ranges({k: v for k, v in values.items() if builtin_method or k[:7] != "method."}, RANGES)
    if cfg.train.epochs <= 0 and cfg.train.max_steps <= 0:
        raise BenchError("train.epochs must be positive (or set train.max_steps)")
    if cfg.eval.checkpoint == "best" and (cfg.data.val_size <= 0 or cfg.train.eval_every <= 0):
        raise BenchError(
            "eval.checkpoint=best needs a validation split and periodic validation: "
            "set data.val_size > 0 and train.eval_every > 0"
        )
    if cfg.optim.awp_gamma > 0 and cfg.optim.sam_rho > 0:
        raise BenchError(
            "optim.awp_gamma and optim.sam_rho are both set; a run perturbs its weights one way: "
            "set one of them to 0"
        )
    # the method's part of the check is bench.run.resolve's, once the method is known
    check_compile(cfg.train, cfg.device)


# the train.compile modes whose inductor settings record CUDA graphs (torch._inductor.list_mode_options:
# both turn on triton.cudagraphs); "default" compiles without them
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile(
    train: TrainConfig,
    device: str,
    method: str | None = None,
    cuda_graph_safe: bool = False,
    safe_methods: tuple[str, ...] | list[str] = (),
) -> None:
    """Refuse, in one line naming what works, a CUDA-graph ``train.compile`` mode the run cannot use:
    one needs the inductor backend, a CUDA device (``device``: auto | cpu | cuda[:N]) and, with
    ``method`` given, a step that suits CUDA graph trees (``cuda_graph_safe``, declared by the method
    class; docs/methods.md, "Which compile mode for which method", says why). ``safe_methods``: the
    methods to name as the ones that can use these modes."""
    mode = train.compile
    if not train.fast or mode not in CUDA_GRAPH_MODES:
        return
    if train.compile_backend != "inductor":
        raise BenchError(
            f"train.compile={mode} records CUDA graphs only with train.compile_backend=inductor "
            f"({train.compile_backend!r} ignores the mode); set train.compile_backend=inductor or use "
            f"train.compile=default"
        )
    kind = str(device).split(":")[0]
    if kind == "auto":
        import torch  # only here: the rest of the config never needs it

        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind != "cuda":
        raise BenchError(
            f"train.compile={mode} records CUDA graphs and needs a CUDA device, but this run trains on "
            f"{kind}; use train.compile=default (any device) or off"
        )
    if method is not None and not cuda_graph_safe:
        safe = f"; CUDA-graph modes suit {', '.join(sorted(safe_methods))}" if safe_methods else ""
        raise BenchError(
            f"train.compile={mode} (CUDA graphs) does not suit method {method}: its step runs the "
            f"model again after a sampler's or attack's input-gradient backward while its loss's forward "
            f"awaits its backward, whose saved activations CUDA graph trees would reuse; use "
            f"train.compile=default (every method) or off{safe}"
        )
