"""Uncertainty of reported numbers: Wilson intervals for accuracies, t-intervals over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95 % by default), as fractions."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(accuracy: float, n: int) -> list[float]:
    """The 95 % Wilson interval of an accuracy measured on ``n`` examples, rounded for the record."""
    lo, hi = wilson(round(accuracy * n), n)
    return [round(lo, 6), round(hi, 6)]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval over ``values`` (e.g. one number per seed);
    the half-width is NaN for a single value."""
    vals = [float(v) for v in values]
    m = mean(vals)
    if len(vals) < 2:
        return m, float("nan")
    from scipy.stats import t

    return m, float(t.ppf(0.5 + confidence / 2, len(vals) - 1) * stdev(vals) / math.sqrt(len(vals)))
