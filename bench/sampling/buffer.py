"""The replay buffer of persistent sampler chains (JEM, JEM++, EB-JDAT).

Entries live on the symmetric [-1, 1] scale. A draw takes ``batch`` entries with replacement
and replaces each, with probability ``reinit_freq``, by a fresh start: U(-1, 1) noise
(``init="uniform"``, JEM) or a draw from the class Gaussians (``init="informative"``, JEM++ and
EB-JDAT; the fresh start's class is drawn uniformly, or is the asked class for a conditional
draw). After the sampler has run, :meth:`ReplayBuffer.write` puts the results back by index.

A class-conditional buffer keeps ``size // K`` entries per class, class ``k`` at indices
``k * (size // K) + i``; a draw for labels ``y`` only touches those blocks. The first fill puts
``size // K`` informative starts of class ``k`` in block ``k`` (as the reference's
``init_from_centers`` does); the remainder of an uneven size gets random classes.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.core.errors import BenchError
from bench.models.base import to_sym
from bench.sampling import gaussians as gaussians_mod

INITS = ("uniform", "informative")


def fresh_starts(
    n: int,
    image_shape: tuple[int, ...],
    num_classes: int,
    init: str,
    gaussians=None,
    y: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` fresh chain starts on the symmetric scale: U(-1, 1), or class-Gaussian draws for
    classes ``y`` (uniformly random classes when ``y`` is None)."""
    if init == "uniform":
        return to_sym(torch.rand(n, *image_shape, device=device))
    if y is None:
        y = torch.randint(0, num_classes, (n,), device=device)
    return gaussians.sample(y)


class ReplayBuffer:
    def __init__(
        self,
        size: int,
        image_shape: tuple[int, ...],
        num_classes: int,
        init: str = "uniform",
        reinit_freq: float = 0.05,
        conditional: bool = False,
        gaussians=None,
        device: torch.device | str = "cpu",
    ):
        if init not in INITS:
            raise BenchError(
                f"replay buffer init {init!r} is not valid; choose uniform or informative"
            )
        if init == "informative" and gaussians is None:
            raise ValueError(
                "an informative replay buffer needs class Gaussians (gaussians=ClassGaussians...)"
            )
        if size < 1 or (conditional and size < num_classes):
            raise BenchError(
                f"replay buffer size {size} is too small (at least 1, or one entry per class when conditional)"
            )
        if not 0.0 <= reinit_freq <= 1.0:
            raise BenchError(f"reinit_freq must lie in [0, 1], got {reinit_freq}")
        self.size, self.num_classes = int(size), int(num_classes)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.init, self.reinit_freq, self.conditional = init, float(reinit_freq), bool(conditional)
        self.gaussians = gaussians.to(device) if gaussians is not None else None
        self.device = torch.device(device)
        self.per_class = self.size // self.num_classes
        self.x = self.initial_fill()

    # -- fresh starts --------------------------------------------------------------------------
    def fresh(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` fresh starts; classes ``y`` (informative init) or uniformly random classes."""
        return fresh_starts(
            n, self.image_shape, self.num_classes, self.init, self.gaussians, y, self.device
        )

    def initial_fill(self) -> torch.Tensor:
        if self.init == "uniform":
            return self.fresh(self.size)
        blocks = torch.arange(self.num_classes, device=self.device).repeat_interleave(
            self.per_class
        )
        rest = torch.randint(
            0, self.num_classes, (self.size - blocks.shape[0],), device=self.device
        )
        return self.fresh(self.size, torch.cat([blocks, rest]))

    # -- draw / write --------------------------------------------------------------------------
    def sample(
        self, batch_size: int, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x0, idx)``: ``batch_size`` entries drawn with replacement (fresh starts mixed in).

        ``y`` (labels, shape (batch_size,)) is required by a conditional buffer and refused by an
        unconditional one.
        """
        if self.conditional:
            if y is None:
                raise ValueError("a class-conditional replay buffer draws for labels y; pass y")
            y = torch.as_tensor(y, device=self.device).long().view(-1)
            batch_size = y.shape[0]
            idx = y * self.per_class + torch.randint(
                0, self.per_class, (batch_size,), device=self.device
            )
        else:
            if y is not None:
                raise ValueError(
                    "this replay buffer is unconditional; build it with conditional=True to draw x|y"
                )
            idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        x0 = self.x[idx]
        if self.reinit_freq > 0:
            redo = torch.rand(batch_size, device=self.device) < self.reinit_freq
            if gaussians_mod.sync_free_default(self.device):
                # fresh starts for the whole batch, kept where the coin says so: the number of
                # restarts is never read back, so a draw never waits for the device
                fresh = self.fresh(batch_size, y if self.conditional else None)
                x0 = torch.where(redo.view(-1, *([1] * len(self.image_shape))), fresh, x0)
            else:  # on the CPU reading the coins costs nothing, and only the restarts are drawn
                rows = redo.nonzero().squeeze(1)
                if rows.numel():
                    x0[rows] = self.fresh(rows.shape[0], y[rows] if self.conditional else None)
        return x0, idx

    def write(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Put sampler results back at ``idx``; a repeated index keeps the last of its results.

        ``x[idx] = v`` with a repeated index has no defined winner when several threads (or a
        GPU) write at once, so every write to one index is given the same value first: that of
        the index's last occurrence, as the references' sequential loop leaves it. The result is
        the same on any number of threads, and nothing is read back from the device."""
        idx = idx.to(self.device)
        pos = torch.arange(idx.shape[0], device=self.device)
        last = torch.where(idx[:, None] == idx[None, :], pos[None, :], -1).amax(
            dim=1
        )  # last occurrence of each
        x = x.detach().to(self.device, self.x.dtype).reshape(-1, *self.image_shape)
        self.x[idx] = x[last]

    def class_of(self, idx: torch.Tensor) -> torch.Tensor:
        """The class block of each index of a conditional buffer."""
        return torch.div(idx, self.per_class, rounding_mode="floor").clamp_(
            max=self.num_classes - 1
        )

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "x": self.x.detach().cpu(),
            "size": self.size,
            "init": self.init,
            "reinit_freq": self.reinit_freq,
            "conditional": self.conditional,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        x = state["x"]
        if (
            tuple(x.shape) != (self.size, *self.image_shape)
            or bool(state.get("conditional")) != self.conditional
        ):
            raise BenchError(
                f"saved replay buffer {tuple(x.shape)} (conditional={state.get('conditional')}) does not fit this "
                f"sampler ({self.size}, {self.image_shape}, conditional={self.conditional}); "
                "keep the run's sampler settings"
            )
        self.x.copy_(x.to(self.device))
