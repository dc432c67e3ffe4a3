"""Verdicts that noise cannot flip, shared by every benchmark.

A figure is judged from many samples taken side by side (the pairwise ratios of interleaved pairs, own-time
differences, per-run throughputs), never from one end-to-end number. Each verdict gives the median and a
bootstrap confidence interval of the median, and says:

- ``MET`` when the whole interval is on the target's good side;
- ``NOT MET`` when the whole interval is on its bad side;
- ``TOO NOISY TO JUDGE`` when the interval straddles the target, or is on its good side but wider than the
  target itself allows (``max_width``: for "at most 10 ms added", an interval 14 ms wide says nothing about
  10 ms); an interval wholly on the bad side is ``NOT MET`` however wide.

Stdlib only (``random`` with a fixed seed), so a verdict is the same every time for the same samples.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

MET, NOT_MET, NOISY = "MET", "NOT MET", "TOO NOISY TO JUDGE"
CONFIDENCE = 0.90
RESAMPLES = 2000


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                    seed: int = 17) -> tuple[float, float, float]:
    """(median, low, high): the samples' median and a percentile-bootstrap interval of it."""
    xs = list(samples)
    if not xs:
        raise ValueError("no samples to judge")
    mid = statistics.median(xs)
    if len(xs) == 1:
        return mid, mid, mid
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return mid, meds[int(tail * (resamples - 1))], meds[int((1 - tail) * (resamples - 1))]


@dataclass(frozen=True)
class Verdict:
    """One figure against one target. ``higher_is_better``: a throughput ratio (at least 1.2x) rather than an
    added latency (at most 10 ms)."""

    name: str
    median: float
    low: float
    high: float
    target: float
    higher_is_better: bool
    outcome: str
    samples: int
    unit: str = ""

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        fmt = _fmt(self.unit)
        return (f"{self.name}: {fmt(self.median)} (90% interval {fmt(self.low)} .. {fmt(self.high)}, "
                f"n={self.samples}) against {sign} {fmt(self.target)}: {self.outcome}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(name: str, samples: Sequence[float], target: float, *, higher_is_better: bool = False,
          max_width: float | None = None, unit: str = "") -> Verdict:
    """The verdict on ``samples`` (see the module docstring); ``max_width`` defaults to none for ratios and to
    the target itself for an absolute "at most" target in ms (``unit='ms'``)."""
    mid, lo, hi = median_interval(samples)
    width = max_width if max_width is not None else (abs(target) if unit == "ms" and not higher_is_better else None)
    good_low, good_high = (lo >= target, hi >= target) if higher_is_better else (hi <= target, lo <= target)
    if not good_high:  # the whole interval on the bad side, however wide: no noise makes it MET
        outcome = NOT_MET
    elif good_low and (width is None or hi - lo <= width):
        outcome = MET
    else:
        outcome = NOISY
    return Verdict(name, mid, lo, hi, target, higher_is_better, outcome, len(samples), unit)


def pairwise_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """b_i / a_i of interleaved pairs (run i of each side, taken next to each other)."""
    if len(a) != len(b):
        raise ValueError(f"unpaired samples: {len(a)} against {len(b)}")
    return [y / x for x, y in zip(a, b, strict=True) if x > 0]


def pairwise_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """b_i - a_i of interleaved pairs."""
    if len(a) != len(b):
        raise ValueError(f"unpaired samples: {len(a)} against {len(b)}")
    return [y - x for x, y in zip(a, b, strict=True)]


def overall(verdicts: Sequence[Verdict]) -> str:
    """All met -> MET; any not met -> NOT MET; otherwise TOO NOISY TO JUDGE."""
    outcomes = {v.outcome for v in verdicts}
    return NOT_MET if NOT_MET in outcomes else NOISY if NOISY in outcomes else MET


def _fmt(unit: str) -> Callable[[float], str]:
    if unit == "ms":
        return lambda x: f"{x:+.1f} ms"
    if unit == "x":
        return lambda x: f"{x:.3f}x"
    return lambda x: f"{x:.4g}{(' ' + unit) if unit else ''}"
