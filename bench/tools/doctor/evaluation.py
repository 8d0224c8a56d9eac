"""Whether evaluation really runs in fp32 and in eval mode: a forward hook on the model that
`bench run` evaluates (:func:`bench.run.evaluation.evaluation_model`, built from weights the fast path
just trained) records every forward of a tiny clean + PGD evaluation (:func:`bench.run.evaluation.run_metrics`)."""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from bench.core.device import current_precision
from bench.run.evaluation import evaluation_model, run_metrics
from bench.tools.doctor.checks import Check, failed, passed
from bench.tools.doctor.one_step import build_trainer, take_step
from metrics.base import EvalContext

CHECK = "eval_fp32_eval_mode"


def evaluation_check(cfg, data, n_examples: int = 16, pgd_steps: int = 2) -> Check:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, tmp, data)
        take_step(
            trainer
        )  # weights from a fast-path step (channels_last, autocast on CUDA), train mode
        device = trainer.device
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    model = evaluation_model(cfg, data.num_classes, weights, device)
    seen: list[dict[str, Any]] = []

    def record(module, inputs, output) -> None:
        flags = current_precision()
        seen.append(
            {
                "input": inputs[0].dtype,
                "output": output.dtype,
                "autocast": torch.is_autocast_enabled(device.type),
                "training": [name or "model" for name, m in module.named_modules() if m.training],
                "tf32": flags["tf32_matmul"] or flags["tf32_cudnn"],
            }
        )

    handle = model.register_forward_hook(record)
    try:
        ctx = EvalContext(device=device, batch_size=n_examples, seed=cfg.seed, show_progress=False)
        results = run_metrics(
            model,
            data,
            "quick",
            n_examples,
            ctx,
            ["clean", "pgd"],
            overrides={"pgd": {"steps": pgd_steps}},
            tf32=cfg.eval.tf32,
        )
    finally:
        handle.remove()
    problems = []
    params = {str(p.dtype) for p in model.parameters()}
    if params != {"torch.float32"}:
        problems.append(f"parameters in {sorted(params)}")
    low = sorted({str(s[k]) for s in seen for k in ("input", "output") if s[k] != torch.float32})
    if low:
        problems.append(f"forwards in {', '.join(low)}")
    if any(s["autocast"] for s in seen):
        problems.append("autocast on")
    training = sorted(
        {n for s in seen for n in s["training"]}, key=lambda n: (n != "model", n)
    )  # the model first
    if training:
        problems.append(
            f"modules in train mode: {', '.join(training[:4])}{' ...' if len(training) > 4 else ''}"
        )
    if not cfg.eval.tf32 and any(s["tf32"] for s in seen):
        problems.append("TF32 on (eval.tf32 is false)")
    by_metric = {r.get("metric"): r for r in results.values()}
    if not seen or set(by_metric) != {"clean", "pgd"}:
        problems.append(f"the evaluation ran {len(seen)} forwards and returned {sorted(results)}")
    values = {
        "forwards": len(seen),
        "n_examples": n_examples,
        "pgd_steps": pgd_steps,
        "clean_accuracy": by_metric.get("clean", {}).get("accuracy"),
        "pgd_accuracy": by_metric.get("pgd", {}).get("accuracy"),
    }
    if problems:
        return failed(
            CHECK, f"evaluation is not plain fp32 in eval mode: {'; '.join(problems)}", **values
        )
    return passed(
        CHECK,
        f"{len(seen)} forwards (clean + PGD-{pgd_steps} on {n_examples} test images): fp32 in and out, "
        f"autocast off, every module in eval mode{'' if cfg.eval.tf32 else ', TF32 off'}",
        **values,
    )
