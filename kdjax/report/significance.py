"""Summaries over seeds: mean ± sample standard deviation, and paired differences with a 95 % interval.

For values x_1..x_n (one per seed):
  mean = (1/n) Σ x_i,   std = sqrt(Σ (x_i - mean)² / (n - 1))                   (None when n < 2)
A paired difference a - b uses d_i = a_i - b_i of the same seed (same initial weights, same data order), so
what the seeds share cancels:
  ci95 = mean(d) ± t_{0.975, n-1} · std(d) / sqrt(n)                           (Student's t; None when n < 2)
The difference is distinguishable from zero at the 5 % level when the interval excludes 0.
"""

import dataclasses
import math
from typing import Sequence

from scipy import stats as scipy_stats


def mean(values: Sequence[float]) -> float:
  return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float | None:
  """The sample standard deviation (n - 1 in the denominator); None for fewer than two values."""
  if len(values) < 2:
    return None
  centre = mean(values)
  return math.sqrt(math.fsum((value - centre) ** 2 for value in values) / (len(values) - 1))


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  a: str
  b: str
  metric: str
  mean: float
  std: float | None
  ci95: tuple[float, float] | None
  n: int

  @property
  def distinguishable(self) -> bool | None:
    """True when the 95 % interval excludes 0; None when there is no interval (one seed)."""
    if self.ci95 is None:
      return None
    return self.ci95[0] > 0 or self.ci95[1] < 0

  def to_json(self) -> dict:
    return {"a": self.a, "b": self.b, "metric": self.metric, "mean": self.mean, "std": self.std,
            "ci95": list(self.ci95) if self.ci95 is not None else None, "n": self.n,
            "distinguishable_from_zero": self.distinguishable}


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
  """mean ± t_{(1+level)/2, n-1} · std / sqrt(n); None for fewer than two values."""
  spread = std(values)
  if spread is None:
    return None
  half = float(scipy_stats.t.ppf((1 + level) / 2, len(values) - 1)) * spread / math.sqrt(len(values))
  centre = mean(values)
  return (centre - half, centre + half)


def paired_difference(a: str, b: str, a_values: Sequence[float], b_values: Sequence[float],
                      metric: str = "val_top1") -> PairedDifference:
  """a - b over seeds, paired by position (a_values[i] and b_values[i] come from the same seed)."""
  if len(a_values) != len(b_values) or not a_values:
    raise ValueError(f"paired values need equal, non-zero lengths: {len(a_values)} vs {len(b_values)}")
  differences = [x - y for x, y in zip(a_values, b_values)]
  return PairedDifference(a, b, metric, mean(differences), std(differences),
                          confidence_interval(differences), len(differences))
