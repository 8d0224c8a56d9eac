"""What one doctor check yields (:class:`Check`), how a check that raises becomes a failed one,
and the table the command prints."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.core.errors import BenchError

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


class ChecksFailed(BenchError):
    """At least one check failed: the table and the JSON say which and why (exit status 1: a finding
    about the machine or the code, not a mistake in the command line, which exits 2)."""

    exit_code = 1


@dataclass
class Check:
    check: str  # what was checked, e.g. "fast_vs_plain" or "compile_vs_eager[default]"
    status: str  # pass | fail | skipped
    detail: str  # one line: the numbers behind a pass or a fail, the reason for a skip
    method: str | None = None  # the training method it was run for, if any
    values: dict[str, Any] = field(default_factory=dict)  # the numbers, for the JSON
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.check} {self.method}" if self.method else self.check


def passed(check: str, detail: str, method: str | None = None, **values: Any) -> Check:
    return Check(check, PASS, detail, method, values)


def failed(check: str, detail: str, method: str | None = None, **values: Any) -> Check:
    return Check(check, FAIL, detail, method, values)


def skipped(check: str, detail: str, method: str | None = None, **values: Any) -> Check:
    return Check(check, SKIPPED, detail, method, values)


def cuda_only(check: str, method: str | None, why: str) -> Check:
    """The row of a check that needs a CUDA device, on a machine without one."""
    return skipped(check, f"CUDA only ({why}); no CUDA device here", method)


def guarded(check: str, method: str | None, fn: Callable[[], Check]) -> Check:
    """Run one check; an exception it raises is that check's failure (one line), not the doctor's end."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        result = failed(check, f"{type(exc).__name__}: {text[:300]}", method)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def summary(checks: list[Check]) -> dict[str, int]:
    return {s: sum(c.status == s for c in checks) for s in (PASS, FAIL, SKIPPED)}


def format_table(checks: list[Check]) -> str:
    import pandas as pd

    rows = [
        {"check": c.check, "method": c.method or "", "status": c.status, "detail": c.detail}
        for c in checks
    ]
    counts = summary(checks)
    table = pd.DataFrame(rows, columns=["check", "method", "status", "detail"]).to_markdown(
        index=False
    )
    return f"{table}\n\n{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIPPED]} skipped"
