"""``train.compile``: which mode suits which method and device, refused in one line before a run starts.

``default`` works for every method on every device. The CUDA-graph modes (``reduce-overhead``,
``max-autotune``) need the inductor backend, a CUDA device, and a method whose step suits CUDA
graph trees (``Method.cuda_graph_safe``): the trees start a new generation, reusing the previous
one's memory, at a compiled call made after a backward, so a step that samples or attacks after
its loss's forward (the JEM family, EB-JDAT) would lose that forward's saved activations
(bench.core.config.check_compile). No GPU here: the decision logic, the messages, that nothing is
written, and the trainer's own check are tested on the CPU; ``default`` is run with the
``aot_eager`` backend (ce and jem++ are in tests/test_fast_path.py; pgd-at and TRADES under bf16
here).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_tiny_args
from test_bad_input import assert_one_error_line, snapshot
from test_fast_path import build_trainer, compiled_check

from bench.core.config import CUDA_GRAPH_MODES, TrainConfig, check_compile
from bench.core.errors import BenchError
from bench.run.resolve import resolve_config
from bench.tools.doctor.steps import tolerance
from methods import METHODS

# what the built-in methods' steps are: an attack's forward/backward pairs (if any) before the loss's
# forwards and one backward, or a sampler / attack run after a loss forward
CUDA_GRAPH_SAFE = {"ce", "pgd-at", "pgd-at-awp", "trades", "trades-awp", "mart", "mart-awp"}
CUDA_GRAPH_UNSAFE = {"jem", "jem++", "sada-jem", "ebjdat", "ebjdat-jem", "ebjdat-sada-jem"}

METHOD_MESSAGE = (
    "train.compile=reduce-overhead (CUDA graphs) does not suit method jem++: its step runs the model again "
    "after a sampler's or attack's input-gradient backward while its loss's forward awaits its backward, whose "
    "saved activations CUDA graph trees would reuse; use train.compile=default (every method) or off; CUDA-graph "
    "modes suit ce, mart, mart-awp, pgd-at, pgd-at-awp, trades, trades-awp"
)
DEVICE_MESSAGE = (
    "train.compile=reduce-overhead records CUDA graphs and needs a CUDA device, but this run trains "
    "on cpu; use train.compile=default (any device) or off"
)
BACKEND_MESSAGE = (
    "train.compile=max-autotune records CUDA graphs only with train.compile_backend=inductor "
    "('aot_eager' ignores the mode); set train.compile_backend=inductor or use train.compile=default"
)


def built_in_methods() -> list[str]:
    return [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("methods.")]


def test_every_built_in_method_is_classified():
    """A new built-in method must be placed on one side (and declare it) before these modes meet it."""
    names = set(built_in_methods())
    assert names == CUDA_GRAPH_SAFE | CUDA_GRAPH_UNSAFE
    assert {n for n in names if METHODS.get(n).cuda_graph_safe} == CUDA_GRAPH_SAFE


@pytest.mark.parametrize("mode", CUDA_GRAPH_MODES)
@pytest.mark.parametrize("method", sorted(CUDA_GRAPH_SAFE | CUDA_GRAPH_UNSAFE))
def test_cuda_graph_modes_by_method(method, mode):
    """On a CUDA device the CUDA-graph modes resolve for the safe methods and are refused, in one line
    naming what works, for the others; ``default`` resolves for all of them."""
    overrides = [f"train.compile={mode}"]
    if method in CUDA_GRAPH_SAFE:
        assert (
            resolve_config(method, preset="smoke", device="cuda", overrides=overrides).train.compile
            == mode
        )
    else:
        with pytest.raises(BenchError) as err:
            resolve_config(method, preset="smoke", device="cuda", overrides=overrides)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith(f"train.compile={mode} (CUDA graphs) does not suit method {method}: ")
        assert (
            "use train.compile=default (every method) or off; CUDA-graph modes suit ce, mart,"
            in msg
        )
    assert (
        resolve_config(
            method, preset="smoke", device="cuda", overrides=["train.compile=default"]
        ).train.compile
        == "default"
    )


def test_the_method_refusal_message():
    with pytest.raises(BenchError) as err:
        resolve_config(
            "jem++", preset="smoke", device="cuda", overrides=["train.compile=reduce-overhead"]
        )
    assert str(err.value) == METHOD_MESSAGE


@pytest.mark.parametrize("method", sorted(CUDA_GRAPH_SAFE | CUDA_GRAPH_UNSAFE))
def test_default_mode_suits_every_method_on_the_cpu(method):
    cfg = resolve_config(method, preset="smoke", device="cpu", overrides=["train.compile=default"])
    assert cfg.train.compile == "default"


def test_cuda_graph_modes_need_a_cuda_device_and_inductor():
    with pytest.raises(BenchError) as err:
        resolve_config(
            "ce", preset="smoke", device="cpu", overrides=["train.compile=reduce-overhead"]
        )
    assert str(err.value) == DEVICE_MESSAGE
    with pytest.raises(BenchError) as err:
        resolve_config(
            "ce",
            preset="smoke",
            device="cuda",
            overrides=["train.compile=max-autotune", "train.compile_backend=aot_eager"],
        )
    assert str(err.value) == BACKEND_MESSAGE
    if not torch.cuda.is_available():  # auto is the CPU here
        with pytest.raises(BenchError) as err:
            resolve_config(
                "ce", preset="smoke", device="auto", overrides=["train.compile=reduce-overhead"]
            )
        assert str(err.value) == DEVICE_MESSAGE
    # the plain path compiles nothing, so the mode does not act and is not refused
    cfg = resolve_config(
        "jem++",
        preset="smoke",
        device="cpu",
        overrides=["train.compile=reduce-overhead", "train.fast=false"],
    )
    assert cfg.train.compile == "reduce-overhead" and not cfg.train.fast


def test_check_compile_decides_in_this_order():
    """The function behind both checks: backend, then device, then the method (when one is given)."""
    t = TrainConfig(compile="reduce-overhead")
    check_compile(t, "cuda:1", "ce", cuda_graph_safe=True)
    check_compile(t, "cuda")  # without a method only the config's part is checked
    with pytest.raises(BenchError, match="does not suit method my-plugin: .*or off$"):
        check_compile(t, "cuda", "my-plugin")  # undeclared: refused, and no list to name
    with pytest.raises(BenchError, match="needs a CUDA device, but this run trains on mps"):
        check_compile(t, "mps", "ce", cuda_graph_safe=True)
    with pytest.raises(BenchError, match="compile_backend=inductor"):
        check_compile(dataclasses.replace(t, compile_backend="eager"), "cpu", "jem")
    for mode in ("off", "default"):
        check_compile(dataclasses.replace(t, compile=mode), "cpu", "jem")


def test_trainer_checks_the_actual_device(tmp_path):
    """A config resolved for CUDA but trained on the CPU (``auto`` elsewhere, or a trainer built
    directly) is refused by the trainer before it compiles anything."""
    cfg = resolve_config(
        "ce",
        preset="smoke",
        device="cuda",
        overrides=["train.compile=reduce-overhead", "data.batch_size=32"],
    )
    from bench.data import load_run_data
    from bench.models import build_model
    from bench.train.trainer import Trainer
    from methods import get_method

    cfg = dataclasses.replace(cfg, device="cpu")
    data = load_run_data(cfg)
    model = build_model(cfg.model, data.num_classes)
    method = get_method("ce").from_dict(cfg.method_cfg)
    with pytest.raises(BenchError) as err:
        Trainer(cfg, model, method, data, torch.device("cpu"), tmp_path, show_progress=False)
    assert str(err.value) == DEVICE_MESSAGE
    assert getattr(model, "_compiled_call_impl", None) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--method", "jem++", "--device", "cuda", "--set", "train.compile=reduce-overhead"],
            METHOD_MESSAGE,
        ),
        (
            ["--method", "ce", "--device", "cpu", "--set", "train.compile=reduce-overhead"],
            DEVICE_MESSAGE,
        ),
        (
            [
                "--method",
                "pgd-at",
                "--device",
                "cuda",
                "--set",
                "train.compile=max-autotune",
                "--set",
                "train.compile_backend=aot_eager",
            ],
            BACKEND_MESSAGE,
        ),
    ],
)
def test_bench_run_refuses_before_writing(extra, message, bench_cli, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("untouched")
    before = snapshot(out)
    res = bench_cli("run", *make_tiny_args(out, tmp_path / "no-data-needed", steps=1), *extra)
    assert_one_error_line(res, message)
    assert res.error_lines[0] == f"error: {message}"
    assert snapshot(out) == before
    assert not (tmp_path / "no-data-needed").exists()  # refused before any data was looked for


def test_default_compile_matches_eager_for_an_attack_method():
    """pgd-at under ``train.compile=default`` (aot_eager): the attack's input gradients and the
    train-mode forwards run through the compiled model and give the eager step (a signed attack
    amplifies rounding, so the tolerances of the attack methods in test_fast_path apply)."""
    small = ["train.amp=off", "method.steps=3", "data.batch_size=16"]
    eager, check = compiled_check("pgd-at", small)
    assert check.status == "pass", check.detail  # the same terms, both steps attacked
    assert eager.step.attacked and eager.tolerance == tolerance("layout", True)
    assert check.values["loss_diff"] <= 1e-2 * max(1.0, abs(check.values["loss"]))
    assert check.values["cosine"] > 0.9


def test_compiled_model_keeps_trades_first_step_in_fp32():
    """The TRADES attack on a compiled model (``default``, aot_eager) under bf16 autocast: its first
    step runs the compiled model with autocast off and gives the eager fp32 step exactly (dynamo
    guards on the autocast state, so the fp32 forward is a graph of its own, not the bf16 one)."""
    from bench.attacks.trades import trades_attack
    from bench.core.config import ModelConfig
    from bench.models import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="resnet8", mean=(0.0,) * 3, std=(1.0,) * 3), num_classes=10
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16, 3, 16, 16), generator=g).float() / 255
    torch.manual_seed(3)
    fp32 = trades_attack(model, x, steps=1)
    model.compile(backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        compiled = trades_attack(model, x, steps=1)
        assert model(x).dtype == torch.bfloat16  # the compiled model does run under autocast here
    assert compiled.dtype == torch.float32
    assert torch.equal(compiled, fp32)


def test_build_trainer_helper_compiles_on_the_fast_path(tmp_path):
    """The fast-path helper these tests share still compiles with ``default`` (so the two tests above
    ran compiled models, not eager ones)."""
    tr = build_trainer(
        "pgd-at", ["train.compile=default", "train.compile_backend=aot_eager"], tmp=str(tmp_path)
    )
    assert getattr(tr.model, "_compiled_call_impl", None) is not None
