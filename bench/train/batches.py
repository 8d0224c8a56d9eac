"""A training step's batches: the main one and the independent extra ones a method declares
(``BatchSpec``), drawn from device-resident streams whose order depends only on the seed and
the epoch, and augmented as batched tensor ops (docs/data.md)."""

from __future__ import annotations

import torch

from bench.core.errors import BenchError
from bench.core.step import BatchSpec
from bench.data import BatchStream, augment_batch, to_float
from bench.data.stream import CROP_PAD


class StepBatches:
    def __init__(self, cfg, method, data, device: torch.device, dist, channels_last: bool):
        self.cfg, self.channels_last = cfg.data, channels_last
        self.specs = method.batch_specs()
        if len(self.specs) != 1 + method.extra_batches:
            raise BenchError(
                f"method {cfg.method!r} declares {method.extra_batches} extra batches but "
                f"{len(self.specs)} batch specs (one for the main batch plus one per extra batch)"
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
            for k, spec in enumerate(self.specs)
        ]

    def prepare(self, x_u8: torch.Tensor, spec: BatchSpec | None = None) -> torch.Tensor:
        """uint8 images as the step sees them: [0, 1] floats, augmented as ``spec`` (else ``data.*``) says."""
        d = self.cfg
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

    def draw(self, step: int):
        """The main batch ``(x, y)`` of global step ``step`` and the prepared extra batches; each
        extra stream cycles through its own epochs (its batch size may differ from the main one's)."""
        x_u8, y = self.streams[0].batch(*divmod(step, len(self.streams[0])))
        x = self.prepare(x_u8, self.specs[0])
        batches = (s.batch(*divmod(step, len(s))) for s in self.streams[1:])
        extra = [(self.prepare(xe, spec), ye) for (xe, ye), spec in zip(batches, self.specs[1:])]
        return x, y, extra
