"""Class-conditional Gaussians of the training images: JEM++'s "informative initialisation".

Per class ``k``: the mean ``mu_k`` and the covariance ``Sigma_k = Xc^T Xc / n_k + 1e-4 I`` of the
flattened images on the symmetric [-1, 1] scale (the covariance divides by ``n``, as the
reference's ``category_mean`` does). By default the images are fitted as the reference saw them:
augmented (reflect-pad 4, random crop, horizontal flip) and with N(0, 0.03^2) noise on the
[-1, 1] scale, one augmented copy of each training image.

Storage and sampling never hold more than one D x D matrix (D = 3072 for CIFAR) at a time on
the host, and keep only a factor ``F_k`` with ``F_k F_k^T + j_k^2 I = Sigma_k + 1e-4 I`` per class:

- ``n_k > D``: ``F_k = cholesky(Sigma_k + 1e-4 I)`` (D x D), ``j_k = 0``;
- ``n_k <= D``: ``F_k = Xc^T / sqrt(n_k)`` (D x n_k, the covariance has rank < n_k anyway),
  ``j_k = 1e-2``; the same distribution at a fraction of the memory (CIFAR-100: 500 images
  per class).

``sample(y)`` draws ``mu_y + F_y z + j_y z'`` and clamps to [-1, 1] (as the reference does for
the buffer's starts). Fits are cached (``.pt`` files keyed by the training set's content hash
and the fitting settings), so a run, its resume and ``bench sample`` share one fit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bench.core.io import torch_save
from bench.data.stream import augment_batch, to_float
from bench.models.base import to_sym

VERSION = 1
DIAG = 1e-4  # added to every covariance (the reference's 1e-4 * I)


def default_cache_dir() -> Path:
    """``$TRILEMMA_BENCH_CACHE`` or ``~/.cache/trilemma-bench``, subfolder ``gaussians``."""
    root = os.environ.get("TRILEMMA_BENCH_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "trilemma-bench"
    )
    return Path(root) / "gaussians"


def content_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def sync_free_default(device: torch.device) -> bool:
    """Whether :meth:`ClassGaussians.sample` avoids host synchronisation by default on ``device``."""
    return device.type == "cuda"


@dataclass(eq=False)
class ClassGaussians:
    """Per-class Gaussians on the symmetric scale; see the module docstring."""

    means: torch.Tensor  # (K, D) float32
    factors: list[torch.Tensor]  # K tensors (D, r_k) float32
    jitters: torch.Tensor  # (K,) float32
    counts: torch.Tensor  # (K,) int64: images per class in the fit
    image_shape: tuple[int, ...]
    meta: dict[str, Any] | None = None

    def __post_init__(self):
        self.image_shape = tuple(int(s) for s in self.image_shape)
        self.meta = dict(self.meta or {})

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def to(self, device) -> ClassGaussians:
        factors = [f.to(device) for f in self.factors]
        return replace(
            self, means=self.means.to(device), factors=factors, jitters=self.jitters.to(device)
        )

    # -- fitting ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        *,
        augment: bool = True,
        noise_std: float = 0.03,
        pad_mode: str = "reflect",
        flip: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        chunk: int = 2048,
    ) -> ClassGaussians:
        """Fit on uint8 images ``x`` (N, C, H, W) with labels ``y``.

        ``augment``: one random crop (pad 4, ``pad_mode``) + ``flip`` per image, as the training
        pipeline does; ``noise_std``: Gaussian noise on the symmetric scale (the reference's 0.03),
        0 for none. The augmentation randomness comes from its own generator seeded by ``seed``,
        so a fit is reproducible. Statistics are accumulated in float64.
        """
        device = torch.device(device)
        d = int(math.prod(x.shape[1:]))
        gen = torch.Generator(device=device).manual_seed(int(seed))
        means, factors, jitters, counts = [], [], [], []
        for k in range(num_classes):
            xk = x[y == k]
            n = int(xk.shape[0])
            if n == 0:
                raise ValueError(
                    f"class {k} has no training images; class Gaussians need every class"
                )
            rows = []
            for i in range(0, n, chunk):
                xb = to_float(xk[i : i + chunk].to(device))
                if augment or noise_std > 0:
                    xb = augment_batch(
                        xb,
                        crop_pad=4 if augment else 0,
                        pad_mode=pad_mode,
                        flip=augment and flip,
                        noise_std=noise_std / 2.0,
                        generator=gen,
                    )  # pixel units = sym / 2
                rows.append(to_sym(xb).reshape(xb.shape[0], d).double())
            xs = torch.cat(rows)
            mu = xs.mean(0)
            xc = xs - mu
            if n > d:
                cov = xc.T @ xc / n
                cov.diagonal().add_(DIAG)
                fac = torch.linalg.cholesky(cov).float()
                jit = 0.0
                del cov
            else:
                fac = (xc.T / math.sqrt(n)).float().contiguous()
                jit = math.sqrt(DIAG)
            means.append(mu.float())
            factors.append(fac)
            jitters.append(jit)
            counts.append(n)
            del xs, xc
        meta = {"version": VERSION, "augment": augment, "noise_std": noise_std}
        meta.update(pad_mode=pad_mode, flip=flip, seed=seed)
        return cls(
            torch.stack(means),
            factors,
            torch.tensor(jitters, dtype=torch.float32, device=device),
            torch.tensor(counts),
            tuple(x.shape[1:]),
            meta,
        )

    @classmethod
    def fit_or_load(
        cls, data, *, cache_dir: str | Path | None = None, device="cpu", **given: Any
    ) -> ClassGaussians:
        """Fit on ``data.x_train`` (an ImageData) with ``given`` of :meth:`fit`'s settings (augment,
        noise_std, pad_mode, flip, seed), or load the cached fit of the same images and settings.

        ``cache_dir``: where to cache; ``None`` or ``""`` = ``<data.cache_dir>/gaussians`` (a run's
        data directory, see ``load_run_data``), or :func:`default_cache_dir` for data that names
        none; ``"off"`` = never cache.
        """
        settings = {
            "augment": True,
            "noise_std": 0.03,
            "pad_mode": "reflect",
            "flip": True,
            "seed": 0,
        }
        settings.update(given)
        path = None
        if str(cache_dir).lower() not in ("off", "none", "false"):
            own = getattr(data, "cache_dir", "")
            root = Path(cache_dir) if cache_dir else Path(own) / "gaussians" if own else None
            keyed = {"version": VERSION, **settings, "num_classes": data.num_classes}
            key = content_hash(data.x_train, data.y_train) + json.dumps(keyed, sort_keys=True)
            key = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
            safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in str(data.name))[:32]
            path = (root or default_cache_dir()) / f"{safe}-{key}.pt"
            if path.is_file():
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True)
                    return cls.from_state_dict(state).to(device)
                except Exception:
                    pass  # a corrupt cache file is refitted and rewritten
        g = cls.fit(data.x_train, data.y_train, data.num_classes, device=device, **settings)
        g.meta["dataset"] = str(data.name)
        if path is not None:
            try:
                torch_save(g.to("cpu").state_dict(), path)
                g.meta["cache"] = str(path)
            except OSError:
                pass  # an unwritable cache only costs refitting next time
        return g

    # -- use -------------------------------------------------------------------------------
    def covariance(self, k: int) -> torch.Tensor:
        """``Sigma_k + 1e-4 I`` (D x D, float64), built on demand from the stored factor."""
        f = self.factors[k].double()
        cov = f @ f.T
        cov.diagonal().add_(float(self.jitters[k]) ** 2)
        return cov

    def sample(self, y: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        """One image per label in ``y``: (N, C, H, W) float32 on the symmetric scale, clamped to [-1, 1].

        The random numbers (one row of factor weights and one of jitter noise per image) are
        drawn for the whole batch first, so both ways of applying them give the same images:
        ``dense=False`` gathers each present class's rows (finding them waits for the device),
        ``dense=True`` computes every class for every row and selects (no host synchronisation,
        K times the arithmetic; the default on CUDA, where a wait inside a training step costs more).

        The draw is fp32 under any autocast (it runs inside the training step's): autocast would
        run the factor products ``z @ F^T`` in bf16, whose rounding (about 2^-8 of each entry) is
        as large as the fine structure of the class covariance.
        """
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._sample(y, dense)

    def _sample(self, y: torch.Tensor, dense: bool | None) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.device).long().view(-1)
        n, d = y.shape[0], self.means.shape[1]
        dense = sync_free_default(self.device) if dense is None else dense
        z = torch.randn(n, max(f.shape[1] for f in self.factors), device=self.device)
        noise = torch.randn(n, d, device=self.device)
        out = self.means[y] + self.jitters[y].unsqueeze(1) * noise
        if dense:
            for k, fac in enumerate(self.factors):
                out = out + (y == k).unsqueeze(1) * (z[:, : fac.shape[1]] @ fac.T)
        else:
            for k in torch.unique(y).tolist():
                idx = (y == k).nonzero().squeeze(1)
                fac = self.factors[k]
                out[idx] += z[idx, : fac.shape[1]] @ fac.T
        return out.clamp_(-1.0, 1.0).view(n, *self.image_shape)

    def state_dict(self) -> dict[str, Any]:
        return {
            "means": self.means,
            "factors": list(self.factors),
            "jitters": self.jitters,
            "counts": self.counts,
            "image_shape": list(self.image_shape),
            "meta": json.dumps(self.meta),
        }

    @classmethod
    def from_state_dict(cls, st: dict[str, Any]) -> ClassGaussians:
        return cls(
            st["means"],
            list(st["factors"]),
            st["jitters"],
            st["counts"],
            tuple(st["image_shape"]),
            json.loads(st.get("meta", "{}")),
        )
