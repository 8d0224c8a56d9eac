"""Golden values: every registered method's first training steps, the EB-JDAT attack and the
samplers on fixed inputs give the numbers stored in ``tests/golden/steps.json``.

The numbers were generated before the training loop's redesign; a refactor must reproduce them.
They are compared bit for bit where the torch version, the CPU's kernel set
(``torch.backends.cpu.get_cpu_capability()``) and the thread count equal those recorded, and
within rtol 1e-5 / atol 1e-7 elsewhere (another CPU's kernels differ in the last bits).
``BENCH_REGEN_GOLDEN=1`` writes the file anew (only after a change that is meant to change them).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from bench.attacks.ebjdat import ebjdat_attack
from bench.core.config import ModelConfig
from bench.data import ImageData
from bench.models import build_model
from bench.run.resolve import resolve_config
from bench.sampling import SAMPLERS, reference_sampler, run_sampler
from bench.train.trainer import Trainer
from methods import METHODS, get_method

GOLDEN = Path(__file__).parent / "golden" / "steps.json"
REGEN = os.environ.get("BENCH_REGEN_GOLDEN") == "1"
SIZE, STEPS, SAMPLES = 16, 2, 16
RTOL, ATOL = 1e-5, 1e-7

# trainer features no method's defaults switch on: EMA and gradient clipping, plain SAM, and the
# order of the hooks after the optimiser step (AWP's restore before the EMA update)
VARIANTS = {
    "ce+ema+clip": ("ce", ["train.ema_decay=0.5", "optim.grad_clip=0.5"]),
    "pgd-at+sam": ("pgd-at", ["optim.sam_rho=0.05", "optim.sam_adaptive=off"]),
    "trades-awp+ema": ("trades-awp", ["train.ema_decay=0.5"]),
}


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def tiny_data(n: int = 48) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 10
    xt = torch.randint(0, 256, (16, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return ImageData("tiny", x, y, xt, torch.arange(16) % 10, classes=[str(k) for k in range(10)])


def summary(t: torch.Tensor) -> dict:
    """A tensor as its bytes' digest (the exact check) and a few numbers (the tolerant one)."""
    t = t.detach().cpu().contiguous()
    flat = t.double().flatten()
    picks = torch.linspace(0, flat.numel() - 1, min(SAMPLES, flat.numel())).round().long()
    return {
        "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
        "shape": list(t.shape),
        "norm": float(flat.norm()).hex(),
        "values": [float(v).hex() for v in flat[picks]],
    }


def params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def trainer_case(method: str, overrides: list[str], tmp: Path) -> dict:
    cfg = resolve_config(
        method,
        preset="smoke",
        seed=0,
        device="cpu",
        overrides=["data.batch_size=8", f"train.max_steps={STEPS}", *overrides],
    )
    data, device = tiny_data(), torch.device("cpu")
    m = get_method(cfg.method).from_dict(cfg.method_cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.num_classes)
    m.setup(model, data, device)
    tr = Trainer(cfg, model, m, data, device, tmp, show_progress=False)
    out = {}
    for s in range(STEPS):
        tr.set_lr(s)
        for k, v in tr.train_step(s).items():
            out[f"step{s}/{k}"] = summary(v)
        out[f"step{s}/params"] = summary(params(model))
    if tr.ema is not None:
        out["ema"] = summary(torch.cat([v.flatten() for v in tr.ema.state_dict().values()]))
    out.update(tensors("method", m.state_dict()))  # the replay buffer
    return out


def tensors(prefix: str, state) -> dict:
    """Every tensor in a nested state dict, summarised, by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: summary(state)}
    if isinstance(state, dict):
        return {
            k: v for key, sub in state.items() for k, v in tensors(f"{prefix}/{key}", sub).items()
        }
    return {}


def fixed_model_and_batch():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet8", activation="leaky_relu"), num_classes=10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (6,), generator=g)
    model.train()
    with torch.no_grad():  # non-trivial batch-norm running statistics
        model(x * 0.8 + 0.1)
    return model, x, y


def attack_cases() -> dict:
    model, x, y = fixed_model_and_batch()
    out = {}
    for impl in ("batched", "reference"):
        for project in (False, True):
            xa = ebjdat_attack(model, x, y, steps=3, project=project, impl=impl)
            out[f"{impl}/project={project}"] = summary(xa)
    return out


def sampler_cases() -> dict:
    model, x, y = fixed_model_and_batch()
    out = {}
    for kind in sorted(SAMPLERS.names()):
        ref = SAMPLERS.get(kind).reference
        for cond in (False, True):
            torch.manual_seed(3)
            xs = run_sampler(reference_sampler(ref), model, x * 2 - 1, y if cond else None, steps=3)
            out[f"{kind}/conditional={cond}"] = summary(xs)
    return out


def cases() -> dict:
    names = sorted(n for n in METHODS.names() if not n.startswith("test-"))
    runs = {n: (n, []) for n in names} | VARIANTS
    return {
        **{
            f"train/{k}": (lambda m=m, o=o: lambda tmp: trainer_case(m, o, tmp))()
            for k, (m, o) in runs.items()
        },
        "attack/ebjdat": lambda tmp: attack_cases(),
        "sampling": lambda tmp: sampler_cases(),
    }


def _close(a: str, b: str) -> bool:
    x, y = float.fromhex(a), float.fromhex(b)
    return abs(x - y) <= ATOL + RTOL * abs(y)


def compare(name: str, got: dict, want: dict, exact: bool) -> list[str]:
    diffs = []
    for key in sorted(set(got) | set(want)):
        g, w = got.get(key), want.get(key)
        if g is None or w is None:
            diffs.append(f"{name}/{key}: {'missing' if g is None else 'not in the golden file'}")
        elif g["shape"] != w["shape"]:
            diffs.append(f"{name}/{key}: shape {g['shape']} != {w['shape']}")
        elif exact and g["sha256"] != w["sha256"]:
            diffs.append(f"{name}/{key}: not bit-identical (norm {g['norm']} vs {w['norm']})")
        elif not exact and not all(
            _close(a, b) for a, b in zip([g["norm"], *g["values"]], [w["norm"], *w["values"]])
        ):
            diffs.append(f"{name}/{key}: beyond rtol {RTOL} / atol {ATOL}")
    return diffs


@pytest.fixture(scope="module")
def golden():
    if REGEN:
        return None
    assert GOLDEN.is_file(), f"{GOLDEN} is missing; BENCH_REGEN_GOLDEN=1 writes it"
    return json.loads(GOLDEN.read_text())


def test_golden_steps(golden, tmp_path):
    got = {name: make(tmp_path / name.replace("/", "_")) for name, make in cases().items()}
    if REGEN:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"environment": environment(), "cases": got}, indent=1) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    exact = golden["environment"] == environment()
    assert sorted(got) == sorted(golden["cases"]), "the methods or cases changed"
    diffs = [d for name in got for d in compare(name, got[name], golden["cases"][name], exact)]
    assert not diffs, (
        f"{len(diffs)} golden value(s) differ ({'exact' if exact else 'tolerant'}):\n"
        + "\n".join(diffs[:40])
    )
