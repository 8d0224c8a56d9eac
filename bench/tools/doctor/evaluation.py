"""Whether evaluation runs in fp32 and in eval mode: a forward hook on the model `bench run`
evaluates (:func:`bench.run.evaluation.evaluation_model`, from weights a fast-path step trained)
records every forward of a tiny clean + PGD evaluation (docs/scale.md, "Checking a machine")."""

from __future__ import annotations

import torch

from bench.core.device import current_precision
from bench.run.evaluation import evaluation_model, run_metrics
from bench.tools.doctor.checks import Check, verdict
from bench.tools.doctor.steps import FastStep
from metrics.base import EvalContext

CHECK = "eval_fp32_eval_mode"


def evaluation_check(cfg, data, n_examples: int = 16, pgd_steps: int = 2) -> Check:
    trained = FastStep(cfg, data).trainer  # channels_last, autocast on CUDA; left in train mode
    weights = {k: v.detach().clone() for k, v in trained.model.state_dict().items()}
    device = trained.device
    model = evaluation_model(cfg, data.num_classes, weights, device)
    seen = {"forwards": 0, "dtypes": set(), "autocast": False, "training": set(), "tf32": False}

    def record(module, inputs, output) -> None:
        flags = current_precision()
        seen["forwards"] += 1
        seen["dtypes"] |= {inputs[0].dtype, output.dtype}
        seen["autocast"] |= torch.is_autocast_enabled(device.type)
        seen["training"] |= {name or "model" for name, m in module.named_modules() if m.training}
        seen["tf32"] |= flags["tf32_matmul"] or flags["tf32_cudnn"]

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
    forwards, problems = seen["forwards"], []
    params = sorted({str(p.dtype) for p in model.parameters()})
    if params != ["torch.float32"]:
        problems.append(f"parameters in {params}")
    if low := sorted(str(d) for d in seen["dtypes"] if d != torch.float32):
        problems.append(f"forwards in {', '.join(low)}")
    if seen["autocast"]:
        problems.append("autocast on")
    if training := sorted(seen["training"], key=lambda n: (n != "model", n)):  # the model first
        more = " ..." if len(training) > 4 else ""
        problems.append(f"modules in train mode: {', '.join(training[:4])}{more}")
    if seen["tf32"] and not cfg.eval.tf32:
        problems.append("TF32 on (eval.tf32 is false)")
    by_metric = {r.get("metric"): r for r in results.values()}
    if not forwards or set(by_metric) != {"clean", "pgd"}:
        problems.append(f"the evaluation ran {forwards} forwards and returned {sorted(results)}")
    accuracy = {f"{k}_accuracy": by_metric.get(k, {}).get("accuracy") for k in ("clean", "pgd")}
    values = {"forwards": forwards, "n_examples": n_examples, "pgd_steps": pgd_steps, **accuracy}
    if problems:
        detail = f"evaluation is not plain fp32 in eval mode: {'; '.join(problems)}"
        return verdict(False, CHECK, detail, **values)
    detail = (
        f"{forwards} forwards (clean + PGD-{pgd_steps} on {n_examples} test images): fp32 in and "
        f"out, autocast off, every module in eval mode{'' if cfg.eval.tf32 else ', TF32 off'}"
    )
    return verdict(True, CHECK, detail, **values)
