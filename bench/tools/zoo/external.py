"""External models: a classifier trained elsewhere, wrapped as this benchmark's energy model, with
its results kept in a normal run record of ``kind: "external"``, found again by (method, dataset,
model-file sha256) so that another protocol merges into the same record (docs/evaluation.md)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.core.config import DataConfig, ModelConfig, RunConfig
from bench.core.device import resolve_device
from bench.core.errors import BenchError
from bench.core.record_reading import load_record
from bench.core.records import RunRecord, now
from bench.core.run_dirs import list_runs, new_run_dir
from bench.data import load_run_data
from bench.models.base import energy_from_logits
from bench.run.evaluation import EvalOptions, evaluate_model


class ExternalEnergyModel(nn.Module):
    """Any classifier on [0, 1] images that returns logits, as an energy model:
    E(x) = -logsumexp_y f(x)[y], and E(x, y) = -f(x)[y] with labels."""

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def energy(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return energy_from_logits(self(x), y)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def external_config(
    method: str,
    arch: str,
    dataset: str,
    data_dir: str = "data",
    batch_size: int = 256,
    seed: int = 0,
    device: str = "auto",
) -> RunConfig:
    """The run config an external record holds: its dataset (what the metrics read) and no method
    settings of its own, so generated samples come from the generic SGLD from fresh starts."""
    cfg = RunConfig(
        method=method,
        preset="external",
        seed=seed,
        device=device,
        data=DataConfig(dataset=dataset, data_dir=data_dir, val_size=0, augment=False),
        model=ModelConfig(arch=arch),
    )
    cfg.eval.batch_size = batch_size
    return cfg


def record_kind(rec: dict[str, Any]) -> str:
    """``external`` for a model evaluated here but trained elsewhere; ``trained`` (implicit in
    records written before the field existed) for a run of `bench run`."""
    return rec.get("kind") or "trained"


def find_external_run(out: str | Path, method: str, dataset: str, sha256: str) -> Path | None:
    """The run directory of the external record of this model file on this dataset, if any."""
    for d in list_runs(out):
        try:
            rec = load_record(d)
        except BenchError:
            continue
        ext = rec.get("external") or {}
        if (
            record_kind(rec) == "external"
            and rec.get("method") == method
            and rec.get("dataset") == dataset
            and ext.get("sha256") == sha256
        ):
            return d
    return None


def external_run_dir(
    out: str | Path,
    cfg: RunConfig,
    device: torch.device,
    data_summary: dict,
    source: dict[str, Any],
) -> Path:
    """The run directory of this external model (``source["sha256"]`` identifies its file): the
    existing one, or a new one with a fresh record."""
    found = find_external_run(out, cfg.method, cfg.data.dataset, source["sha256"])
    if found is not None:
        return found
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.method)[:40]
    run_id, run_dir = new_run_dir(out, safe, cfg.data.dataset)
    rec = RunRecord.create(run_dir, run_id, cfg, device, data_summary, changes={}, save=False)
    rec.data.update(kind="external", preset=None, external=dict(source))
    rec.data["training"] = {}
    rec.data["status"], rec.data["finished_at"] = "complete", now()
    rec.save()
    return run_dir


def evaluate_external(
    net: nn.Module,
    opts: EvalOptions,
    *,
    method: str,
    arch: str,
    dataset: str,
    source: dict[str, Any],
    out: str | Path = "results",
    data_dir: str = "data",
    device: str | None = None,
):
    """Evaluate an external classifier ``net`` (on [0, 1] images, returning logits) under ``opts``,
    into its ``kind: "external"`` record under ``out``/runs/ (created on the first evaluation).
    ``source`` describes the model and must hold its file's ``sha256``. Returns (results, skipped, record)."""
    if not source.get("sha256"):
        raise BenchError("an external model needs the sha256 of its file to be recorded")
    opts.check()
    cfg = external_config(method, arch, dataset, data_dir, opts.batch_size or 256)
    dev = resolve_device(device or "auto")
    data = load_run_data(cfg)
    model = ExternalEnergyModel(net, data.num_classes).to(dev).eval()
    with torch.no_grad():
        probe = model(data.x_test[:2].to(dev).float() / 255)
    if probe.ndim != 2 or probe.shape[1] != data.num_classes:
        raise BenchError(
            f"{arch} returns outputs of shape {tuple(probe.shape[1:])} per image; {dataset} has "
            f"{data.num_classes} classes, so it cannot be evaluated on it"
        )
    # the record is created only once every check of the request has passed
    run_dir = functools.partial(external_run_dir, out, cfg, dev, data.summary(), source)
    return evaluate_model(model, cfg, data, opts, run_dir)
