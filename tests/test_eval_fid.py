"""FID / KID / IS through torch-fidelity, checked against an independent numpy/scipy computation."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from metrics.base import METRICS, EvalContext

NAME = "trilemma-test-standin"


class StandIn(FeatureExtractorBase):
    """A small fixed extractor: 4x4 average pooling of the uint8 image, then fixed random projections."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(123)
        self.register_buffer("w_feat", torch.randn(48, 16, generator=g) / 7)
        self.register_buffer("w_logits", torch.randn(16, 10, generator=g))

    @staticmethod
    def get_provided_features_list():
        return ("feat", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "feat", "kid": "feat", "prc": "feat"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        assert x.dtype == torch.uint8
        h = F.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        feat = torch.tanh(h @ self.w_feat)
        out = {"feat": feat, "logits": feat @ self.w_logits}
        return tuple(out[k] for k in self.features_list)


if NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(NAME, StandIn)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("TRILEMMA_OFFLINE", "1")


def make_data(n_real=60):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (n_real, 3, 8, 8), dtype=torch.uint8, generator=g)
    return SimpleNamespace(
        name="synthetic",
        x_train=x[:40],
        y_train=torch.zeros(40, dtype=torch.long),
        x_test=x[40:],
        y_test=torch.zeros(n_real - 40, dtype=torch.long),
        num_classes=10,
    )


def write_samples(path, n=50):
    g = torch.Generator().manual_seed(9)
    x = (
        (torch.rand(n, 8, 8, 3, generator=g) ** 2 * 255).round().to(torch.uint8)
    )  # darker than the real images
    np.savez(path, x=x.numpy())
    return x.permute(0, 3, 1, 2).contiguous()


def samples_ctx(tmp_path, out_dir=None, show_progress=False) -> EvalContext:
    """An evaluation context whose generated samples are ``tmp_path/gen.npz`` (see :func:`write_samples`)."""
    return EvalContext(
        device=torch.device("cpu"),
        batch_size=16,
        seed=0,
        out_dir=out_dir,
        show_progress=show_progress,
        samples=str(tmp_path / "gen.npz"),
    )


def frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_matches_independent_frechet_distance(tmp_path):
    data = make_data()
    gen = write_samples(tmp_path / "gen.npz")
    ctx = samples_ctx(tmp_path, tmp_path / "run")
    settings = {"feature_extractor": NAME, "real_split": "train+test", "n_samples": 50}
    out = METRICS.get("fid")(None, data, settings, ctx)

    ext = StandIn(NAME, ["feat", "logits"]).eval()
    with torch.no_grad():
        fg, lg = ext(gen)
        fr, _ = ext(torch.cat([data.x_train, data.x_test]))
    ref = frechet(fg.double().numpy(), fr.double().numpy())
    assert out["fid"] == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert out["fid"] > 0.05  # the two sets differ: a broken pipeline returning ~0 fails
    assert out["n_samples"] == 50 and out["n_real"] == 60 and out["n_examples"] == 50
    assert out["weights_sha256"] is None and out["samples"]["source"] == "npz"
    assert out["real_stats_cached"] is False

    # IS from the same pass, against an independent KL computation (no shuffle effect on 1 split)
    res_is = METRICS.get("is")(None, data, {**settings, "splits": 1}, ctx)
    p = torch.softmax(lg.double(), 1).numpy()
    kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean()
    assert res_is["is_mean"] == pytest.approx(float(np.exp(kl)), rel=1e-6)

    kid = METRICS.get("kid")(None, data, settings, ctx)
    assert np.isfinite(kid["kid_mean"]) and kid["kid_subset_size"] == 50
    assert kid["kid_std"] > 0  # subsets of 50 of the 60 real images differ
    # subsets as large as both sets are all the same set: no spread is claimed (not a std of 0)
    whole = METRICS.get("kid")(None, data, {**settings, "n_real": 50, "kid_subset_size": 50}, ctx)
    assert whole["kid_std"] is None and "no spread" in whole["note"]

    # the real images' statistics are cached, keyed by dataset content, split, extractor and weights
    cached = list(
        (tmp_path / "cache" / "fidelity").glob("synthetic-train+test-n60-*-stat-fid-feat.pt")
    )
    assert len(cached) == 1
    ctx2 = samples_ctx(tmp_path)
    again = METRICS.get("fid")(None, data, settings, ctx2)
    assert again["real_stats_cached"] is True and again["fid"] == pytest.approx(
        out["fid"], rel=1e-9
    )
    other_split = METRICS.get("fid")(None, data, {**settings, "real_split": "test"}, ctx2)
    assert other_split["real_stats_cached"] is False and other_split["n_real"] == 20


def test_weights_fc_detection(tmp_path):
    from metrics.inception import weights_have_fc

    torch.save({"fc.weight": torch.ones(3, 2), "fc.bias": torch.zeros(3)}, tmp_path / "with_fc.pth")
    torch.save(
        {"fc.weight": torch.full((3, 2), float("nan")), "fc.bias": torch.zeros(3)},
        tmp_path / "nan_fc.pth",
    )
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "no_fc.pth")
    assert weights_have_fc(str(tmp_path / "with_fc.pth")) is True
    assert weights_have_fc(str(tmp_path / "nan_fc.pth")) is False
    assert weights_have_fc(str(tmp_path / "no_fc.pth")) is False


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("BENCH_SLOW_TESTS"),
    reason="InceptionV3 at 299x299 on CPU: ~2 min; BENCH_SLOW_TESTS=1",
)
def test_inception_weights_without_fc_give_fid_and_is_na(tmp_path):
    """The real InceptionV3 code path with a weights file whose fc is NaN (as `bench fid-weights` writes)."""
    from metrics.fid_weights import _inception_skeleton
    from metrics.inception import sha256_file, weights_have_fc

    torch.manual_seed(0)
    sd = _inception_skeleton().state_dict()
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], float("nan"))
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], float("nan"))
    wpath = tmp_path / "w.pth"
    torch.save(sd, wpath)
    assert weights_have_fc(str(wpath)) is False

    data = make_data(n_real=46)
    write_samples(tmp_path / "gen.npz", n=4)
    data.x_train, data.x_test = data.x_train[:4], data.x_test[:2]
    ctx = EvalContext(
        device=torch.device("cpu"),
        batch_size=8,
        seed=0,
        out_dir=None,
        show_progress=False,
        samples=str(tmp_path / "gen.npz"),
        weights=str(wpath),
    )
    settings = {"real_split": "train", "n_samples": 4}
    fid = METRICS.get("fid")(None, data, settings, ctx)
    assert np.isfinite(fid["fid"]) and fid["weights_sha256"] == sha256_file(wpath)
    assert fid["feature_extractor"] == "inception-v3-compat" and fid["weights_source"] == "given"
    res_is = METRICS.get("is")(None, data, settings, ctx)
    assert res_is["is_mean"] is None and "n/a" in res_is["note"]


def test_missing_weights_is_one_line(tmp_path):
    from metrics.base import MetricUnavailable

    make_data()
    write_samples(tmp_path / "gen.npz")
    ctx = samples_ctx(tmp_path)
    with pytest.raises(MetricUnavailable) as err:
        METRICS.get("fid").preflight({"n_samples": 50}, ctx)
    msg = str(err.value)
    assert "\n" not in msg and "weights-inception-2015-12-05-6726825d.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg and "bench fid-weights" in msg


def test_is_alone_reads_no_real_images(tmp_path):
    data = make_data()
    write_samples(tmp_path / "gen.npz")
    data.x_train = data.x_train[:0]  # no real images at all: IS must not need them
    ctx = samples_ctx(tmp_path)
    res = METRICS.get("is")(
        None, data, {"feature_extractor": NAME, "n_samples": 50, "splits": 2}, ctx
    )
    assert res["is_mean"] > 1.0 and res["n_samples"] == 50 and res["n_real"] is None


def test_the_sample_source_is_chosen_recorded_and_refused_when_missing(tmp_path):
    from bench.core.errors import BenchError
    from metrics.base import MetricUnavailable
    from metrics.images import sample_source

    with_buffer = SimpleNamespace(samples=None, buffer_state={"x": torch.zeros(4, 3, 8, 8)})
    without = SimpleNamespace(samples=None, buffer_state=None)
    npz = SimpleNamespace(samples="gen.npz", buffer_state={"x": torch.zeros(4, 3, 8, 8)})
    assert sample_source({}, with_buffer) == "buffer" and sample_source({}, without) == "fresh"
    assert sample_source({"sample_source": "fresh"}, with_buffer) == "fresh"
    assert sample_source({"sample_source": "fresh"}, npz) == "npz"  # --samples wins, and says so
    with pytest.raises(MetricUnavailable, match="this run saved no replay buffer"):
        sample_source({"sample_source": "buffer"}, without)
    with pytest.raises(
        BenchError, match="sample_source 'chains' unknown; choose one of: auto, fresh, buffer"
    ):
        sample_source({"sample_source": "chains"}, without)


def test_a_small_sample_fid_is_labelled_and_gets_a_column_of_its_own_n(tmp_path):
    from bench.leaderboard.compare import leaderboard

    data = make_data()
    write_samples(tmp_path / "gen.npz")
    ctx = samples_ctx(tmp_path)
    settings = {"feature_extractor": NAME, "real_split": "train+test", "n_samples": 50}
    fid = METRICS.get("fid")(None, data, settings, ctx)
    kid = METRICS.get("kid")(None, data, settings, ctx)
    assert fid["sample_source"] == "npz" and "50 < 10,000 generated samples" in fid["small_n"]
    small = fid["fid"]
    big = {**fid, "fid": 12.5, "n_samples": 10000, "n_examples": 10000}
    big.pop("small_n")
    recs = [
        {"run_id": rid, "method": "jem", "evaluations": {"standard": ev}}
        for rid, ev in (("small", {"fid": fid, "kid": kid}), ("big", {"fid": big}))
    ]
    df = leaderboard(recs).set_index("run_id")
    assert df.loc["small", "standard/fid@50"] == pytest.approx(round(small, 4))
    assert pd.isna(df.loc["small", "standard/fid"]) and df.loc["big", "standard/fid"] == 12.5
    assert pd.isna(df.loc["big", "standard/fid@50"])
    assert df.loc["small", "standard/kid@50 ±"] == pytest.approx(round(kid["kid_std"], 5))


def test_fid_sample_flags_set_the_generation_metrics_the_evaluation_runs():
    from bench.run.evaluation import generation_overrides, merge_overrides

    got = generation_overrides("standard", None, 2000, 5000)
    assert got == {
        "fid": {"n_samples": 2000, "n_real": 5000},
        "kid": {"n_samples": 2000, "n_real": 5000},
        "is": {"n_samples": 2000},
    }  # IS reads no reference images
    assert generation_overrides("standard", ["clean", "kid"], None, 300) == {"kid": {"n_real": 300}}
    assert generation_overrides("quick", None, None, None) == {}
    # an explicit --set wins over the abbreviation
    assert merge_overrides(got, {"fid": {"n_samples": 7}})["fid"] == {
        "n_samples": 7,
        "n_real": 5000,
    }


def test_fid_sample_flags_bad_input_is_one_line(bench_cli, complete_run):
    out = complete_run.parent.parent
    before = (complete_run / "record.json").read_bytes()
    res = bench_cli(
        "eval", complete_run.name, "--out", out, "--protocol", "quick", "--fid-samples", "500"
    )
    assert (
        res.exit_code == 2 and "runs none (clean, pgd)" in res.stderr and len(res.error_lines) == 1
    )
    res = bench_cli(
        "eval", complete_run.name, "--out", out, "--metrics", "kid", "--fid-reference", "1"
    )
    assert res.exit_code == 2 and "--fid-reference must be at least 2" in res.stderr
    assert (complete_run / "record.json").read_bytes() == before


def test_the_library_prints_nothing_and_our_progress_line_names_the_counts(tmp_path, capfd):
    """torch-fidelity's own chatter ("Extracting statistics...", its metric lines) is silenced; the
    evaluation says in one line what it extracts, and nothing at all under -q."""
    data = make_data()
    write_samples(tmp_path / "gen.npz")
    settings = {"feature_extractor": NAME, "real_split": "train+test", "n_samples": 50}
    for show, run in ((True, "a"), (False, "b")):
        ctx = samples_ctx(tmp_path, tmp_path / run, show)
        METRICS.get("fid")(None, data, settings, ctx)
        out, err = capfd.readouterr()
        text = out + err
        assert "Frechet" not in text and "Extracting" not in text and "Kernel" not in text
        if show:
            assert (
                "FID/KID/IS (trilemma-test-standin): features of 50 generated images and 60 real images"
                in err
            )
        else:
            assert text.strip() == ""


def test_the_authors_real_set_depends_on_the_dataset(tmp_path):
    """`paper`'s FID compares with the EB-JDAT authors' real set: CIFAR-10 train+test, CIFAR-100 train."""
    from metrics import get_protocol
    from metrics.images import resolve_real_split

    assert get_protocol("paper").metrics["fid"]["real_split"] == "authors"
    c10, c100 = SimpleNamespace(name="cifar10"), SimpleNamespace(name="cifar100")
    assert (
        resolve_real_split("authors", c10) == "train+test"
        and resolve_real_split("authors", c100) == "train"
    )
    assert resolve_real_split("test", c100) == "test"
    data = make_data()  # "synthetic": not one of the authors' datasets -> train+test
    write_samples(tmp_path / "gen.npz")
    ctx = samples_ctx(tmp_path, tmp_path / "run")
    out = METRICS.get("fid")(
        None, data, {"feature_extractor": NAME, "real_split": "authors", "n_samples": 50}, ctx
    )
    assert out["real_split"] == "train+test" and out["n_real"] == 60
    data.name = "cifar100"
    out = METRICS.get("fid")(
        None, data, {"feature_extractor": NAME, "real_split": "authors", "n_samples": 50}, ctx
    )
    assert out["real_split"] == "train" and out["n_real"] == 40


def test_an_unknown_real_split_is_one_line_naming_the_choices(tmp_path):
    from bench.core.errors import BenchError

    data = make_data()
    write_samples(tmp_path / "gen.npz")
    ctx = samples_ctx(tmp_path)
    with pytest.raises(BenchError) as err:
        METRICS.get("fid")(
            None, data, {"feature_extractor": NAME, "real_split": "val", "n_samples": 50}, ctx
        )
    assert "real_split 'val' unknown" in str(err.value) and "authors" in str(err.value)
    assert "\n" not in str(err.value)
