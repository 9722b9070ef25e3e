"""Intervals for the rates MedWB reports: a figure on 72 cases is a range, not a point."""
from __future__ import annotations


def wilson(k: int, n: int, confidence: float = 0.95) -> list[float]:
    """The Wilson score interval of ``k`` successes in ``n`` (scipy's binomtest); [0, 1] for n = 0."""
    from scipy.stats import binomtest
    if n <= 0:
        return [0.0, 1.0]
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]
