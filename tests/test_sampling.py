"""bench.sampling: SGLD, PYLD, class Gaussians, replay buffer, contrastive sampler, generation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bench.core.config import ModelConfig
from bench.core.errors import BenchError
from bench.data import ImageData
from bench.models import build_model
from bench.sampling import (
    ClassGaussians,
    ContrastiveSampler,
    ReplayBuffer,
    SamplerConfig,
    first_layer_is_affine,
    from_sym,
    make_sample_fn,
    pyld,
    sgld,
    to_sym,
)
from bench.train import checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on the shared 2-core machine, OpenMP spinning under oversubscription
    costs up to 50x; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_model(norm="none", seed=0, num_classes=4, gain=30.0):
    """A fixed resnet8 whose head is scaled up by ``gain`` so its energy has a usable slope."""
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(arch="resnet8", norm=norm, activation="leaky_relu"), num_classes
    )
    with torch.no_grad():
        model.head.weight.mul_(gain)
    return model


def energy(model, xs, y=None):
    with torch.no_grad():
        return model.energy(from_sym(xs), y)


def toy_data(n_per_class=30, num_classes=3, hw=8, seed=0):
    """Classes of distinct colours with a little texture: uint8 (N, 3, hw, hw)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(num_classes):
        base = torch.tensor([40 + 80 * k, 200 - 70 * k, 120.0]).view(1, 3, 1, 1)
        xs.append((base + 20 * torch.randn(n_per_class, 3, hw, hw, generator=g)).clamp(0, 255))
        ys.append(torch.full((n_per_class,), k))
    x = torch.cat(xs).to(torch.uint8)
    y = torch.cat(ys).long()
    return ImageData(
        name="toy",
        x_train=x,
        y_train=y,
        x_test=x[:10],
        y_test=y[:10],
        classes=[str(k) for k in range(num_classes)],
    )


# -- scale ---------------------------------------------------------------------------------------
def test_symmetric_scale_gradients_are_the_references():
    model = small_model()
    xs = torch.rand(4, 3, 16, 16) * 2 - 1
    a = xs.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(model(from_sym(a)).logsumexp(1).sum(), a)
    b = xs.clone().requires_grad_(
        True
    )  # the reference: the network applied to [-1, 1] inputs directly
    (gb,) = torch.autograd.grad(model.trunk(model.first_layer(b)).logsumexp(1).sum(), b)
    assert torch.equal(to_sym(from_sym(xs)), xs)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6)


# -- samplers ------------------------------------------------------------------------------------
def test_sgld_lowers_energy_and_noise_alone_does_not():
    model = small_model()
    torch.manual_seed(1)
    x0 = torch.rand(32, 3, 16, 16) * 2 - 1
    e0 = energy(model, x0)
    torch.manual_seed(2)
    x1 = sgld(model, x0, steps=20, step_size=1.0, noise_std=0.01, clamp=False)
    torch.manual_seed(2)
    xn = sgld(model, x0, steps=20, step_size=0.0, noise_std=0.01, clamp=False)
    drop, drop_noise = (
        float((e0 - energy(model, x1)).mean()),
        float((e0 - energy(model, xn)).mean()),
    )
    assert drop > 0.05 and drop > 20 * abs(drop_noise), (drop, drop_noise)
    assert (energy(model, x1) < e0).float().mean() > 0.9
    # clamp keeps the range; model mode is restored; no weight gradients accumulated
    model.train()
    xc = sgld(model, x0, steps=5, step_size=5.0, noise_std=0.1, clamp=True, mode="eval")
    assert xc.abs().max() <= 1.0 and model.training
    assert all(p.grad is None for p in model.parameters())


def test_sgld_conditional_lowers_class_energy():
    model = small_model()
    x0 = torch.rand(16, 3, 16, 16) * 2 - 1
    y = torch.full((16,), 2)
    x1 = sgld(model, x0, steps=10, step_size=1.0, noise_std=0.0, clamp=True, y=y)
    assert float((energy(model, x0, y) - energy(model, x1, y)).mean()) > 0.05


def test_pyld_lowers_energy_and_stays_in_range():
    model = small_model()
    x0 = torch.rand(32, 3, 16, 16) * 2 - 1
    trace = {}
    x1 = pyld(model, x0, n_steps=10, in_steps=5, lr=0.2, eps=1.0, trace=trace)
    e0, e1 = energy(model, x0), energy(model, x1)
    assert float((e0 - e1).mean()) > 0.05 and (e1 < e0).float().mean() > 0.9
    assert x1.abs().max() <= 1.0
    torch.testing.assert_close(trace["energy_start"], e0.mean(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_pyld_fast_path_equals_general_sampler(norm):
    base = small_model(norm=norm)
    base.train()
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    assert first_layer_is_affine(base)
    runs = {}
    for fast in (True, False):
        m = copy.deepcopy(base)
        torch.manual_seed(3)
        x = pyld(
            m,
            x0,
            n_steps=4,
            in_steps=5,
            lr=0.2,
            eps=1.0,
            sgld_lr=0.1,
            sgld_std=0.01,
            mode="train",
            fast=fast,
        )
        runs[fast] = (x, m)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=0, atol=1e-5)
    for (n1, b1), (_, b2) in zip(runs[True][1].named_buffers(), runs[False][1].named_buffers()):
        torch.testing.assert_close(
            b1, b2, rtol=0, atol=1e-6, msg=n1
        )  # same full forwards, same BN updates
    # the eps clamp and the per-sub-step range clamp are applied
    xa = pyld(base, x0, n_steps=1, in_steps=1, lr=10.0, eps=0.01, mode="eval")
    assert float((xa - x0.clamp(-1, 1)).abs().max()) <= 0.1 + 1e-6


def test_pyld_general_path_for_a_nonaffine_stem():
    model = small_model()

    class Bent(type(model)):
        def stem(self, x):
            return torch.tanh(super().stem(x))

    bent = Bent(widths=(16, 32, 64), num_classes=4, norm="none", activation="leaky_relu")
    bent.load_state_dict(model.state_dict())
    assert not first_layer_is_affine(bent)
    with pytest.raises(ValueError):
        pyld(bent, torch.zeros(2, 3, 8, 8), n_steps=1, in_steps=1, fast=True)
    x0 = torch.rand(16, 3, 16, 16) * 2 - 1
    x1 = pyld(bent, x0, n_steps=5, in_steps=5, lr=0.2, eps=1.0)
    assert float((energy(bent, x0) - energy(bent, x1)).mean()) > 0.02


# -- class Gaussians -----------------------------------------------------------------------------
def test_gaussian_fit_matches_numpy_both_factor_forms():
    torch.manual_seed(0)
    x = (
        (128 + 30 * torch.randn(70, 3, 3, 3)).clamp(0, 255).to(torch.uint8)
    )  # D = 27, rarely clamped
    y = torch.cat(
        [torch.zeros(50), torch.ones(20)]
    ).long()  # class 0: n > D (Cholesky); class 1: n <= D
    g = ClassGaussians.fit(x, y, 2, augment=False, noise_std=0.0)
    assert g.factors[0].shape == (27, 27) and g.factors[1].shape == (27, 20)
    for k in (0, 1):
        a = (x[y == k].double().numpy() / 255.0 * 2 - 1).reshape(-1, 27)
        mean = a.mean(0)
        cov = np.cov(a, rowvar=False, bias=True) + 1e-4 * np.eye(27)
        np.testing.assert_allclose(g.means[k].numpy(), mean, atol=1e-6)
        np.testing.assert_allclose(g.covariance(k).numpy(), cov, atol=1e-5)
    s = g.sample(torch.zeros(4000, dtype=torch.long))
    assert s.shape == (4000, 3, 3, 3) and s.abs().max() <= 1.0
    emp = s.reshape(4000, -1).double()
    a0 = (x[y == 0].double() / 255.0 * 2 - 1).reshape(-1, 27)
    assert float((emp.mean(0) - a0.mean(0)).abs().max()) < 0.05
    assert float((emp.std(0) - a0.std(0, unbiased=False)).abs().max()) < 0.05


def test_gaussian_fit_augmented_is_cached_and_reproducible(tmp_path):
    data = toy_data()
    g1 = ClassGaussians.fit_or_load(data, augment=True, noise_std=0.03, cache_dir=tmp_path)
    files = list(tmp_path.glob("toy-*.pt"))
    assert len(files) == 1
    g2 = ClassGaussians.fit_or_load(data, augment=True, noise_std=0.03, cache_dir=tmp_path)
    torch.testing.assert_close(g1.means, g2.means)
    g3 = ClassGaussians.fit_or_load(data, augment=False, noise_std=0.0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("toy-*.pt"))) == 2  # other settings, other cache entry
    assert not torch.equal(g1.means, g3.means)
    g4 = ClassGaussians.fit(data.x_train, data.y_train, 3, augment=True, noise_std=0.03)
    torch.testing.assert_close(g1.means, g4.means)


# -- replay buffer -------------------------------------------------------------------------------
def test_buffer_reinit_freq_zero_and_one():
    torch.manual_seed(0)
    buf = ReplayBuffer(100, (3, 4, 4), 5, init="uniform", reinit_freq=0.0)
    assert buf.x.shape == (100, 3, 4, 4) and buf.x.abs().max() <= 1
    x0, idx = buf.sample(64)
    assert torch.equal(x0, buf.x[idx])
    buf.write(idx, torch.full_like(x0, 7.0))
    assert torch.all(buf.x[idx] == 7.0)
    buf.reinit_freq = 1.0
    before = buf.x.clone()
    x0, idx = buf.sample(100)
    assert not (x0 == 7.0).any() and x0.abs().max() <= 1  # every entry a fresh U(-1, 1) start
    assert (
        int((before[idx] == 7.0).flatten(1).all(1).sum()) > 10
    )  # ... although many drawn entries were 7
    assert torch.equal(buf.x, before)  # drawing alone does not modify the buffer


def test_conditional_buffer_only_returns_the_asked_class():
    data = toy_data()
    g = ClassGaussians.fit(data.x_train, data.y_train, 3, augment=False, noise_std=0.0)
    buf = ReplayBuffer(
        30, data.image_shape, 3, init="informative", reinit_freq=0.0, conditional=True, gaussians=g
    )
    nearest = lambda x: torch.cdist(x.reshape(x.shape[0], -1), g.means).argmin(1)  # noqa: E731
    assert torch.equal(
        nearest(buf.x), torch.arange(3).repeat_interleave(10)
    )  # block k filled from class k
    for k in range(3):
        buf.x[k * 10 : (k + 1) * 10] = float(k) / 10
    y = torch.tensor([2, 0, 1, 2] * 16)
    x0, idx = buf.sample(64, y)
    assert torch.equal(buf.class_of(idx), y)
    assert torch.equal(x0.reshape(64, -1)[:, 0], y.float() / 10)
    buf.reinit_freq = 1.0
    x0, _ = buf.sample(64, y)
    assert torch.equal(nearest(x0), y)  # fresh starts come from the asked class's Gaussian
    with pytest.raises(ValueError):
        buf.sample(4)


def test_buffer_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    buf = ReplayBuffer(50, (3, 4, 4), 5, init="uniform", reinit_freq=0.05)
    checkpoint.save(tmp_path / "c.pt", {"model": {}, "method": {"buffer": buf.state_dict()}})
    other = ReplayBuffer(50, (3, 4, 4), 5, init="uniform", reinit_freq=0.05)
    assert not torch.equal(other.x, buf.x)
    other.load_state_dict(checkpoint.load(tmp_path / "c.pt")["method"]["buffer"])
    assert torch.equal(other.x, buf.x)
    wrong = ReplayBuffer(40, (3, 4, 4), 5)
    with pytest.raises(Exception, match="does not fit"):
        wrong.load_state_dict(buf.state_dict())


# -- contrastive sampler and generation ----------------------------------------------------------
def test_contrastive_sampler_draw_writes_back(tmp_path):
    data = toy_data(hw=16)
    model = small_model(num_classes=3)
    cfg = SamplerConfig(
        kind="pyld",
        steps=3,
        in_steps=2,
        step_size=0.0,
        noise_std=0.0,
        init="informative",
        buffer_size=60,
        reinit_freq=0.0,
        mode="train",
        cache_dir=str(tmp_path),
    )
    s = ContrastiveSampler(cfg, data, "cpu")
    before = s.buffer.x.clone()
    torch.manual_seed(0)
    x = s.draw(model, 16)
    assert x.shape == (16, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    changed = (s.buffer.x != before).flatten(1).any(1)
    assert 0 < int(changed.sum()) <= 16
    assert "energy_start" in s.last
    state = s.state_dict()
    s2 = ContrastiveSampler(cfg, data, "cpu")
    s2.load_state_dict(state)
    assert torch.equal(s2.buffer.x, s.buffer.x)
    with pytest.raises(BenchError, match="hmc"):
        SamplerConfig(kind="hmc")


def test_make_sample_fn_for_a_plain_classifier(tmp_path, monkeypatch):
    from bench.run.resolve import resolve_config

    monkeypatch.setenv("TRILEMMA_BENCH_CACHE", str(tmp_path))  # the Gaussian fit's default cache

    data = toy_data(hw=16)
    model = small_model(num_classes=3)
    cfg = resolve_config("ce", preset="smoke")
    fn = make_sample_fn(model, cfg, "cpu", steps=5, data=data)
    assert fn.sampler.kind == "sgld" and fn.sampler.init == "informative"
    x = fn(10)
    assert x.shape == (10, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    assert fn.stats["energy_end"] < fn.stats["energy_start"]
    xc = fn(6, y=1)
    assert xc.shape == (6, 3, 16, 16)
    # from a saved buffer: distinct entries, no steps by default; x|y from an unconditional buffer
    buf = ReplayBuffer(40, (3, 16, 16), 3, init="uniform")
    fn2 = make_sample_fn(model, cfg, "cpu", buffer_state=buf.state_dict(), sampler="pyld")
    out = fn2(40)
    assert fn2.steps == 0 and fn2.sampler.kind == "pyld"
    assert torch.equal(
        out.reshape(40, -1).sort(0).values,
        from_sym(buf.x).clamp(0, 1).reshape(40, -1).sort(0).values,
    )
    pred = model.eval()(from_sym(buf.x)).argmax(1)
    k = int(pred[0])
    out_k = fn2(5, y=k)
    assert torch.all(model(out_k).argmax(1) == k)


def test_a_run_caches_its_gaussian_fit_under_its_data_directory(
    bench_cli, tiny_args, shapes_data_dir, tmp_path, monkeypatch
):
    import json
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(
        shapes_data_dir, data_dir, ignore=shutil.ignore_patterns("cache")
    )  # the images only
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TRILEMMA_BENCH_CACHE", raising=False)
    out = tmp_path / "results"
    res = bench_cli(
        "run",
        "--method",
        "jem++",
        *tiny_args(out, data_dir, steps=1),
        "--set",
        "eval.enabled=false",
        "--set",
        "method.sampler.buffer_size=32",
    )
    assert res.exit_code == 0, res.stderr
    fits = list((data_dir / "cache" / "gaussians").glob("*.pt"))
    assert len(fits) == 1 and not home.exists()  # nothing outside the data directory
    (run_dir,) = (out / "runs").iterdir()
    assert json.loads((run_dir / "record.json").read_text())["data"]["cache_dir"] == str(
        data_dir / "cache"
    )


def test_bench_sample_shows_sampler_progress_unless_quiet(bench_cli, complete_run):
    out = complete_run.parent.parent
    loud = bench_cli(
        "sample",
        complete_run.name,
        "--out",
        out,
        "-n",
        "4",
        "--steps",
        "3",
        "--grid",
        complete_run.parent.parent / "loud.png",
    )
    assert loud.exit_code == 0, loud.stderr
    assert "sgld 4 samples" in loud.stderr and "3/3" in loud.stderr  # one tick per sampler step
    quiet = bench_cli(
        "sample",
        complete_run.name,
        "--out",
        out,
        "-n",
        "4",
        "--steps",
        "3",
        "-q",
        "--grid",
        complete_run.parent.parent / "quiet.png",
    )
    assert quiet.exit_code == 0 and "samples" not in quiet.stderr
    import numpy as np
    from PIL import Image

    # the progress hook changes nothing in what is drawn
    assert np.array_equal(
        np.asarray(Image.open(out / "loud.png")), np.asarray(Image.open(out / "quiet.png"))
    )
