"""What one doctor check yields (:class:`Check`), a check that raises as a failed one, and the table
the command prints (docs/scale.md, "Checking a machine")."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.core.errors import BenchError

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


class ChecksFailed(BenchError):
    """A finding about the machine or the code (exit status 1), not a bad command line (2)."""

    exit_code = 1


class NotRun(Exception):
    """Raised by a check that needs what an earlier, failed one made: the message is its detail."""


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


def verdict(ok: bool, check: str, detail: str, method: str | None = None, **values: Any) -> Check:
    return Check(check, PASS if ok else FAIL, detail, method, values)


def guarded(check: str, method: str | None, fn: Callable[[], Check]) -> Check:
    """Run one check; an exception it raises is that check's failure (one line), not the doctor's end."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except NotRun as exc:
        result = verdict(False, check, str(exc), method)
    except Exception as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        result = verdict(False, check, f"{type(exc).__name__}: {text[:300]}", method)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


def summary(checks: list[Check]) -> dict[str, int]:
    return {s: sum(c.status == s for c in checks) for s in (PASS, FAIL, SKIPPED)}


def format_table(checks: list[Check]) -> str:
    import pandas as pd

    rows = [[c.check, c.method or "", c.status, c.detail] for c in checks]
    table = pd.DataFrame(rows, columns=["check", "method", "status", "detail"])
    counts = summary(checks)
    return (
        f"{table.to_markdown(index=False)}\n\n"
        f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIPPED]} skipped"
    )
