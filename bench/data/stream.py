"""Device-resident batching and batched augmentation (no per-sample Python work).

A :class:`BatchStream` holds a split as uint8 tensors on the training device and yields the
batch for ``(epoch, index)`` from a permutation that depends only on ``(seed, stream, epoch)``:
a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.core.errors import BenchError


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x_uint8.float().div_(255.0)


def augment_batch(
    x: torch.Tensor,
    *,
    crop_pad: int = 4,
    pad_mode: str = "reflect",
    flip: bool = True,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop (after padding) + horizontal flip + Gaussian noise, for a whole float batch.

    ``x`` is float in [0, 1], shape (N, C, H, W). The noise is added after augmentation and is
    not clamped (as in the JEM references). Randomness comes from ``generator`` or the global RNG.
    """
    n, c, h, w = x.shape
    dev = x.device
    if crop_pad > 0:
        mode = "reflect" if pad_mode == "reflect" else "constant"
        xp = F.pad(x, (crop_pad,) * 4, mode=mode)
        oy = torch.randint(0, 2 * crop_pad + 1, (n,), device=dev, generator=generator)
        ox = torch.randint(0, 2 * crop_pad + 1, (n,), device=dev, generator=generator)
        rows = oy[:, None] + torch.arange(h, device=dev)[None, :]  # (n, h)
        cols = ox[:, None] + torch.arange(w, device=dev)[None, :]  # (n, w)
        xp = torch.gather(xp, 2, rows[:, None, :, None].expand(n, c, h, xp.shape[3]))
        x = torch.gather(xp, 3, cols[:, None, None, :].expand(n, c, h, w))
    if flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if noise_std > 0:
        noise = torch.randn(x.shape, device=dev, generator=generator, dtype=x.dtype)
        x = x + noise_std * noise
    return x


def check_batch_fits(batch_size: int, world: int, n: int, setting: str = "data.batch_size") -> None:
    """One clear error when ``world`` processes' batches of ``batch_size`` exceed ``n`` images."""
    if batch_size * world > n:
        raise BenchError(
            f"{setting}={batch_size} x {world} process(es) exceeds the {n} training images; "
            f"lower it with --set {setting}=N"
        )


CROP_PAD = 4  # pixels of padding before the random crop of data.augment


def check_augment_fits(image_shape: tuple[int, ...], augment: bool, pad_mode: str) -> None:
    """Reflect padding needs images larger than the padding: one clear error instead of F.pad's."""
    h, w = image_shape[-2:]
    if augment and pad_mode == "reflect" and min(h, w) <= CROP_PAD:
        raise BenchError(
            f"data.augment pads images by {CROP_PAD} pixels with pad_mode=reflect, which needs images "
            f"larger than {CROP_PAD} pixels; these are {h}x{w}: --set data.pad_mode=zeros or "
            "--set data.augment=false"
        )


class BatchStream:
    """Shuffled fixed-size batches of one split, resident on ``device`` (sharded across ranks)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        stream: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = True,
        rank: int = 0,
        world: int = 1,
        setting: str = "data.batch_size",
    ):
        """``setting``: the config key that chose ``batch_size`` (named in the error message)."""
        check_batch_fits(batch_size, world, x.shape[0], setting)
        self.x = x.to(device)
        self.y = y.to(device)
        self.batch_size = batch_size
        self.seed, self.stream = seed, stream
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.rank, self.world = rank, world
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def __len__(self) -> int:
        n, per_step = self.x.shape[0], self.batch_size * self.world
        return n // per_step if self.drop_last else -(-n // per_step)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.stream * 7_919 + epoch) % (2**63)
            )
            self._perm = torch.randperm(self.x.shape[0], generator=g).to(self.device)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels of batch ``index`` of ``epoch`` (this rank's shard of it).

        With ``world`` processes, global batch ``index`` holds ``batch_size * world`` images of
        one shared permutation, and rank ``r`` takes the ``r``-th block of ``batch_size``.
        """
        start = (index * self.world + self.rank) * self.batch_size
        idx = self._permutation(epoch)[start : start + self.batch_size]
        return self.x[idx], self.y[idx]
