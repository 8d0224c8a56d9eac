"""Every value a method's training step returns lives on the training device.

With several ranks the trainer stacks the logged values into one tensor for the all-reduce
(``bench.train.distributed.reduce_logged``); one value made on another device (``torch.tensor(x)``
without ``device=``, as pgd-at's ``eps`` once was) crashes the first log flush on CUDA. On this
CPU-only machine such a tensor would be on the CPU like the rest, so each step runs with the
default device set to ``meta``: a tensor created without ``device=`` lands there, and the check
against ``ctx.device`` (and the stacking the reduction does) catches it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import trainer_for

from bench.core.errors import BenchError
from bench.core.step import StepContext
from bench.run.resolve import resolve_config
from bench.train import distributed as D
from bench.train.trainer import Trainer, step_seed
from methods import METHODS, get_method
from methods.ce import CrossEntropy

BUILTIN = sorted(n for n in METHODS.names() if get_method(n).__module__.startswith("methods."))
TINY = ["data.batch_size=8", "data.train_subset=64", "model.arch=resnet8", "train.amp=off"]


def _trainer(method: str, data_dir, tmp_path, method_obj=None) -> Trainer:
    cfg = resolve_config(
        method, preset="smoke", device="cpu", overrides=[*TINY, f"data.data_dir={data_dir}"]
    )
    return trainer_for(cfg, tmp_path, method_obj)


def _context(tr: Trainer, step: int) -> tuple[torch.Tensor, torch.Tensor, StepContext]:
    """The batch and context the trainer's own step ``step`` would hand the method."""
    epoch, index = divmod(step, tr.steps_per_epoch)
    torch.manual_seed(step_seed(tr.cfg.seed, step))
    x_u8, y = tr.batches.streams[0].batch(epoch, index)
    extra = [
        (tr.batches.prepare(xe, spec), ye)
        for (xe, ye), spec in zip(
            (s.batch(*divmod(step, len(s))) for s in tr.batches.streams[1:]), tr.batches.specs[1:]
        )
    ]
    ctx = StepContext(
        step=step,
        epoch=epoch,
        device=tr.device,
        num_classes=tr.data.num_classes,
        autocast=tr.autocast,
        extra_batches=extra,
        data=tr.data,
        steps_per_epoch=tr.steps_per_epoch,
    )
    return tr.batches.prepare(x_u8, tr.batches.specs[0]), y, ctx


def test_every_builtin_method_is_checked():
    assert {"ce", "pgd-at", "mart", "trades", "jem", "jem++", "sada-jem", "ebjdat"} <= set(BUILTIN)


@pytest.mark.parametrize("method", BUILTIN)
def test_training_step_returns_scalars_on_the_training_device(method, shapes_data_dir, tmp_path):
    tr = _trainer(method, shapes_data_dir, tmp_path)
    x, y, ctx = _context(tr, step=1)
    with torch.device("meta"):  # a tensor created without device= goes here, not to ctx.device
        terms = tr.method.training_step(tr.model, x, y, ctx)
    assert set(tr.method.loss_weights()) <= set(terms)
    for name, value in terms.items():
        assert isinstance(value, torch.Tensor), (name, type(value))
        assert value.device == ctx.device, (
            f"{method} returned {name} on {value.device}, not {ctx.device}"
        )
        assert value.is_floating_point() and value.ndim == 0, (
            name,
            value.dtype,
            tuple(value.shape),
        )
        assert torch.isfinite(value), name
    # the flush's path: accumulate as the trainer does, then stack for the all-reduce
    sums = {k: tr._logged(v) for k, v in terms.items()}
    stacked = D.stack_logged(sums, sorted(sums))
    assert (
        stacked.device == ctx.device
        and stacked.dtype == torch.float32
        and stacked.shape == (len(sums),)
    )


def test_stacking_names_a_value_made_on_another_device():
    values = {"ce": torch.tensor(1.0), "eps": torch.tensor(0.03, device="meta")}
    with pytest.raises(BenchError, match=r"eps on meta") as err:
        D.stack_logged(values, sorted(values))
    assert "\n" not in str(err.value) and "ctx.device" in str(err.value)


class _FloatLogging(CrossEntropy):
    """ce that also logs a Python float (allowed for a logged-only value)."""

    def training_step(self, model, x, y, ctx):
        return {**super().training_step(model, x, y, ctx), "margin": 0.25}


def test_trainer_step_returns_float32_tensors_on_its_device(shapes_data_dir, tmp_path):
    tr = _trainer("ce", shapes_data_dir, tmp_path, method_obj=_FloatLogging({}))
    tr.set_lr(0)
    logged = tr.train_step(0)
    assert set(logged) == {"loss", "ce", "acc", "margin"}
    for name, value in logged.items():
        assert (
            isinstance(value, torch.Tensor)
            and value.device == tr.device
            and value.dtype == torch.float32
        ), name
    assert float(logged["margin"]) == 0.25
    assert float(logged["loss"]) == pytest.approx(float(logged["ce"]))
