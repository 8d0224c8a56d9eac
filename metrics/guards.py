"""Guardrails: the checks every robustness number carries (``checks`` and ``reliable`` in its result;
a failed check makes ``reliable`` false and puts its reason in ``unreliable_reasons``). What each
check verifies and what it fails for: docs/evaluation.md, "Guardrails on every robustness number"."""

from __future__ import annotations

from typing import Any

import torch

TOL = 1e-6  # slack on eps and on the [0, 1] range (float32 rounding of x + delta)
# relative difference of two forward passes above which the model counts as random
RANDOM_TOL = 1e-5


def check(passed: bool, detail: str, **extra: Any) -> dict[str, Any]:
    return {"passed": bool(passed), "detail": detail, **extra}


class RunningRange:
    """The smallest and largest value seen across tensors, kept on their device (no host sync)."""

    def __init__(self) -> None:
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def add(self, t: torch.Tensor) -> None:
        lo, hi = t.detach().amin(), t.detach().amax()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def bounds(self) -> tuple[float, float]:
        """(lo, hi) as numbers; (0, 1) when nothing was seen."""
        return (float(self.lo), float(self.hi)) if self.lo is not None else (0.0, 1.0)

    def outside_unit(self, what: str) -> str | None:
        """The problem, when a value left [0, 1] (beyond float slack)."""
        lo, hi = self.bounds()
        return f"{what} in [{lo:.4g}, {hi:.4g}], not [0, 1]" if lo < -TOL or hi > 1 + TOL else None


class ForwardWatch:
    """Watches every forward call of ``model`` while active: mode, autocast, dtype and input range."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.calls = self.train_calls = self.autocast_calls = 0
        self.dtypes: set[str] = set()
        self.range = RunningRange()
        self._handle = None

    def __enter__(self) -> ForwardWatch:
        self._handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, args) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            return
        self.calls += 1
        self.train_calls += int(module.training)
        self.autocast_calls += int(torch.is_autocast_enabled(x.device.type))
        if x.dtype != torch.float32:
            self.dtypes.add(str(x.dtype).replace("torch.", ""))
        self.range.add(x)

    def result(self) -> dict[str, Any]:
        lo, hi = self.range.bounds()
        problems = []
        if self.train_calls:
            problems.append(f"{self.train_calls} of {self.calls} forward passes in train mode")
        if self.autocast_calls:
            problems.append(f"{self.autocast_calls} under autocast")
        if self.dtypes:
            problems.append(f"inputs in {', '.join(sorted(self.dtypes))}")
        outside = self.range.outside_unit("inputs")
        if outside:
            problems.append(outside)
        detail = (
            "; ".join(problems)
            if problems
            else f"{self.calls} forward passes, all in eval mode, fp32, no autocast, inputs in [0, 1]"
        )
        return check(
            not problems, detail, calls=self.calls, input_min=round(lo, 6), input_max=round(hi, 6)
        )


class PerturbationMeter:
    """The largest l-inf distance and the range of adversarial examples, accumulated on the device."""

    def __init__(self) -> None:
        self.dist: torch.Tensor | None = None
        self.range = RunningRange()

    def add(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        d = (x_adv.detach().float() - x.detach().float()).abs().amax()
        self.dist = d if self.dist is None else torch.maximum(self.dist, d)
        self.range.add(x_adv)

    def result(self, eps: float) -> dict[str, Any]:
        if self.dist is None:
            return check(True, "no adversarial examples returned", max_linf=0.0)
        dist = float(self.dist)
        problems = []
        if dist > eps + TOL:
            problems.append(
                f"max l-inf perturbation {dist * 255:.4g}/255 exceeds eps {eps * 255:.4g}/255"
            )
        outside = self.range.outside_unit("adversarial images")
        if outside:
            problems.append(outside)
        detail = (
            "; ".join(problems)
            or f"max l-inf perturbation {dist * 255:.4g}/255 <= eps {eps * 255:.4g}/255, in [0, 1]"
        )
        return check(not problems, detail, max_linf=round(dist, 8))


@torch.no_grad()
def forward_is_random(model: torch.nn.Module, x: torch.Tensor) -> tuple[bool, float]:
    """(whether two eval-mode forward passes of ``x`` differ, their largest relative difference)."""
    was = model.training
    model.eval()
    try:
        a, b = model(x).float(), model(x).float()
    finally:
        model.train(was)
    diff = float((a - b).abs().amax() / a.abs().amax().clamp_min(1.0))
    return diff > RANDOM_TOL, diff


def zero_gradient_check(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """How many images of ``x`` have an all-zero input gradient of the logit margin (eval mode)."""
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            xr = x.detach().clone().requires_grad_(True)
            z = model(xr).float()
            other = z.masked_fill(
                torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")
            ).amax(1)
            (g,) = torch.autograd.grad((z.gather(1, y[:, None]).squeeze(1) - other).sum(), xr)
    finally:
        model.train(was)
    zero = int((g.flatten(1).abs().sum(1) == 0).sum())
    if zero:
        return check(
            False,
            f"{zero} of {x.shape[0]} images have a zero input gradient (a non-differentiable step such "
            "as quantisation?): gradient attacks cannot move them; use an adaptive attack (BPDA)",
            zero=zero,
            of=int(x.shape[0]),
        )
    return check(
        True,
        f"all {x.shape[0]} images of the first batch have a non-zero input gradient",
        zero=0,
        of=int(x.shape[0]),
    )


def randomness_check(random: bool, diff: float, eot: int) -> dict[str, Any]:
    if not random:
        return check(
            True, "two forward passes of the same batch agree: the model is deterministic", eot=eot
        )
    if eot > 1:
        return check(
            True,
            f"the forward is random (relative difference {diff:.3g}); attacked with EOT {eot}",
            eot=eot,
        )
    return check(
        False,
        f"the forward is random (two passes differ by {diff:.3g}) and the attack used no EOT: use a "
        "protocol with EOT (e.g. paper-eot) or --set pgd.eot=20 / autoattack.version=rand",
        eot=eot,
    )


def verdict(result: dict[str, Any], checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``result`` with ``checks`` merged in and ``reliable`` / ``unreliable_reasons`` recomputed."""
    merged = {**(result.get("checks") or {}), **checks}
    reasons = [f"{name}: {c['detail']}" for name, c in merged.items() if not c.get("passed", True)]
    out = {**result, "checks": merged, "reliable": not reasons}
    out.pop("unreliable_reasons", None)
    if reasons:
        out["unreliable_reasons"] = reasons
    return out


def _acc(res: dict[str, Any] | None) -> float | None:
    v = (res or {}).get("accuracy")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def apply_ordering(
    results: dict[str, dict[str, Any]], stored: dict[str, dict[str, Any]] | None = None
) -> None:
    """Add the ``ordering`` check to the robustness results in ``results`` (in place): robust <= clean
    on the same images, and AutoAttack <= PGD at the same eps and n. ``stored`` holds earlier results
    of the same protocol to compare with (they are not changed)."""
    pgd = {**(stored or {}), **results}.get("pgd")
    for name in ("pgd", "autoattack"):
        res = results.get(name)
        if res is None or _acc(res) is None:
            continue
        problems, notes = [], []
        clean = res.get("clean_accuracy")
        if isinstance(clean, (int, float)):
            if _acc(res) > clean + TOL:
                problems.append(
                    f"robust accuracy {100 * _acc(res):.2f}% above clean {100 * clean:.2f}% on the same images"
                )
            else:
                notes.append("robust <= clean")
        if (
            name == "autoattack"
            and pgd is not None
            and _acc(pgd) is not None
            and pgd.get("n_examples") == res.get("n_examples")
            and _same_eps(res, pgd)
        ):
            a_aa, a_pgd = (
                _acc(res),
                _acc(pgd),
            )  # the weaker (higher) AutoAttack number is the suspect one
            if a_aa > a_pgd + TOL:
                problems.append(
                    f"AutoAttack {100 * a_aa:.2f}% above PGD {100 * a_pgd:.2f}% at the same eps and "
                    "images: the stronger attack did worse (gradient masking or a bug)"
                )
            else:
                notes.append("AutoAttack <= PGD")
        if problems or notes:
            results[name] = verdict(
                res, {"ordering": check(not problems, "; ".join(problems or notes))}
            )


def _same_eps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ea = a.get("eps", (a.get("settings") or {}).get("eps"))
    eb = b.get("eps", (b.get("settings") or {}).get("eps"))
    return isinstance(ea, (int, float)) and isinstance(eb, (int, float)) and abs(ea - eb) < 1e-9
