"""Summaries over seeds, paired differences with their tests, and the family-wise (Holm) verdict.

For values x_1..x_n (one per seed):
  mean = (1/n) Σ x_i,   std = sqrt(Σ (x_i - mean)² / (n - 1))                   (None when n < 2)
A paired difference a - b uses d_i = a_i - b_i of the same seed (same initial weights, same data order), so
what the seeds share cancels:
  ci95 = mean(d) ± t_{0.975, n-1} · std(d) / sqrt(n)                           (Student's t; None when n < 2)
  p    = 2 · P(T_{n-1} > |mean(d)| / (std(d) / sqrt(n)))                         (scipy.stats.ttest_rel's p)
This interval varies the seed (initial weights and data order) with the validation set held fixed: it says
nothing about how far the gap depends on which N validation images were drawn. When every seed gives the same
difference (std 0) there is no seed-to-seed spread to build an interval from: the difference is reported as
"the same on every seed" and judged by the per-example test instead.

Per example, within one seed (the validation set's noise): an exact McNemar test. Of the N examples, a_only are
right by a and wrong by b, b_only the reverse; under "a and b are equally accurate" each of the
a_only + b_only discordant examples is a fair coin, so
  p = binomtest(a_only, a_only + b_only, 1/2), two-sided            (p = 1 without discordant examples)
and a - b = (a_only - b_only) / N in top-1. Pooled over seeds, the discordant counts are summed.

A study reports several comparisons; each at 5 % would together err more often than 5 %. Holm's step-down
procedure (Holm 1979) keeps the family-wise error at ALPHA: with the m p-values sorted p_(1) <= ... <= p_(m),
  holm_(i) = max_{j <= i} min(1, (m - j + 1) · p_(j))
and a comparison is distinguishable from zero when its holm p <= ALPHA.

`bootstrap_interval` resamples both sources at once (seeds, and the validation examples shared by every seed).
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
HOLM = "Holm step-down over the comparisons of this report (family-wise error 0.05)"
T_TEST = "paired t over seeds"
EXACT = "exact McNemar over validation examples"


def mean(values: Sequence[float]) -> float:
  return math.fsum(values) / len(values)


def std(values: Sequence[float]) -> float | None:
  """The sample standard deviation (n - 1 in the denominator); None for fewer than two values."""
  if len(values) < 2:
    return None
  centre = mean(values)
  return math.sqrt(math.fsum((value - centre) ** 2 for value in values) / (len(values) - 1))


def _scipy_stats():
  """scipy.stats, imported when a test is computed (the import costs a run ~1 s; a one-seed run needs none)."""
  from scipy import stats
  return stats


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
  """mean ± t_{(1+level)/2, n-1} · std / sqrt(n); None for fewer than two values."""
  spread = std(values)
  if spread is None:
    return None
  half = float(_scipy_stats().t.ppf((1 + level) / 2, len(values) - 1)) * spread / math.sqrt(len(values))
  centre = mean(values)
  return (centre - half, centre + half)


def t_test_p(differences: Sequence[float]) -> float | None:
  """The two-sided one-sample t p of mean(d) = 0 (a paired t test); None for n < 2 or zero spread."""
  spread = std(differences)
  if not spread:
    return None
  statistic = mean(differences) / (spread / math.sqrt(len(differences)))
  return float(2 * _scipy_stats().t.sf(abs(statistic), len(differences) - 1))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
  """Holm-adjusted p-values in the given order (see the module docstring); None entries are not in the family
  (m counts the others) and stay None."""
  tested = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
  adjusted: list[float | None] = [None] * len(p_values)
  running, m = 0.0, len(tested)
  for rank, (p, index) in enumerate(tested):
    running = max(running, min(1.0, (m - rank) * p))
    adjusted[index] = running
  return adjusted


@dataclasses.dataclass(frozen=True)
class McNemar:
  """a_only: examples a gets right and b wrong; b_only the reverse; examples: N (summed over seeds when
  pooled); p_value: the exact two-sided test."""

  a_only: int
  b_only: int
  examples: int
  p_value: float

  @property
  def difference(self) -> float:
    """a - b in top-1 points."""
    return 100.0 * (self.a_only - self.b_only) / self.examples

  def to_json(self) -> dict:
    return {"a_only": self.a_only, "b_only": self.b_only, "examples": self.examples, "p_value": self.p_value,
            "difference": self.difference}


def _exact(a_only: int, b_only: int, examples: int) -> McNemar:
  discordant = a_only + b_only
  p = 1.0 if discordant == 0 else float(_scipy_stats().binomtest(a_only, discordant, 0.5).pvalue)
  return McNemar(int(a_only), int(b_only), int(examples), p)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
  """The exact McNemar test of two models' per-example correctness (bool [N] each, the same examples)."""
  a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
  if a_correct.shape != b_correct.shape or a_correct.ndim != 1:
    raise ValueError(f"per-example correctness needs two equal 1-D vectors: {a_correct.shape} vs {b_correct.shape}")
  return _exact(int(np.sum(a_correct & ~b_correct)), int(np.sum(~a_correct & b_correct)), len(a_correct))


def pooled_mcnemar(tests: Sequence[McNemar]) -> McNemar:
  """The exact test on the discordant examples summed over seeds."""
  return _exact(sum(t.a_only for t in tests), sum(t.b_only for t in tests), sum(t.examples for t in tests))


def bootstrap_interval(a_correct: np.ndarray, b_correct: np.ndarray, level: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
  """A percentile interval of mean over seeds of (top-1 of a - top-1 of b), in points, resampling two levels:
  the seeds (rows) with replacement, and the validation examples (columns) with replacement, one draw of
  examples per resample shared by every seed (all seeds are scored on the same validation set).
  a_correct, b_correct: bool [seeds, N]. Deterministic (numpy's default_rng(seed))."""
  difference = np.asarray(a_correct, np.float64) - np.asarray(b_correct, np.float64)
  seeds, examples = difference.shape
  rng = np.random.default_rng(seed)
  means = np.empty(resamples)
  chunk = max(1, min(resamples, 2_000_000 // max(examples * seeds, 1)))
  for start in range(0, resamples, chunk):
    count = min(chunk, resamples - start)
    columns = rng.integers(0, examples, size=(count, examples))
    per_seed = difference[:, columns].mean(axis=-1).T   # [count, seeds]
    rows = rng.integers(0, seeds, size=(count, seeds))
    means[start:start + count] = np.take_along_axis(per_seed, rows, axis=1).mean(axis=1)
  low, high = np.quantile(100.0 * means, [(1 - level) / 2, (1 + level) / 2])
  return float(low), float(high)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  a: str
  b: str
  metric: str
  mean: float
  std: float | None
  ci95: tuple[float, float] | None
  n: int
  p_value: float | None = None

  @property
  def same_on_every_seed(self) -> bool:
    """Several seeds and no spread: every seed gave the same difference."""
    return self.n >= 2 and self.std == 0

  @property
  def distinguishable(self) -> bool | None:
    """True when the raw 95 % interval excludes 0; None when there is none (one seed, or zero spread)."""
    if self.ci95 is None:
      return None
    return self.ci95[0] > 0 or self.ci95[1] < 0

  def to_json(self) -> dict:
    return {"a": self.a, "b": self.b, "metric": self.metric, "mean": self.mean, "std": self.std,
            "ci95": list(self.ci95) if self.ci95 is not None else None, "n": self.n, "p_value": self.p_value,
            "same_on_every_seed": self.same_on_every_seed, "distinguishable_raw": self.distinguishable}


def paired_difference(a: str, b: str, a_values: Sequence[float], b_values: Sequence[float],
                      metric: str = "val_top1") -> PairedDifference:
  """a - b over seeds, paired by position (a_values[i] and b_values[i] come from the same seed). No interval
  for one seed, nor when every seed gives the same difference (a zero-width interval is no evidence)."""
  if len(a_values) != len(b_values) or not a_values:
    raise ValueError(f"paired values need equal, non-zero lengths: {len(a_values)} vs {len(b_values)}")
  differences = [x - y for x, y in zip(a_values, b_values)]
  spread = std(differences)
  return PairedDifference(a, b, metric, mean(differences), spread,
                          confidence_interval(differences) if spread else None, len(differences),
                          t_test_p(differences))


def compare(a: str, b: str, a_values: Sequence[float], b_values: Sequence[float],
            a_correct: np.ndarray | None = None, b_correct: np.ndarray | None = None,
            seeds: Sequence[int] | None = None) -> dict:
  """One comparison a - b in top-1: the paired difference over seeds and, given the per-example correctness
  (bool [seeds, N] each), the exact McNemar test per seed and pooled, and the two-level bootstrap interval.
  `test` and `test_p` name the test its verdict rests on: the paired t over seeds where there is a spread,
  else the exact per-example test (one seed, or the same difference on every seed). `family` fills in the
  Holm p and the verdict."""
  paired = paired_difference(a, b, a_values, b_values)
  entry = paired.to_json()
  entry.update(per_example=None, ci95_bootstrap=None, test=None, test_p=None)
  if a_correct is not None and b_correct is not None:
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    tests = [mcnemar(x, y) for x, y in zip(a_correct, b_correct)]
    pooled = pooled_mcnemar(tests)
    seeds = list(seeds) if seeds is not None else list(range(len(tests)))
    entry["per_example"] = {"test": EXACT, "examples": int(a_correct.shape[1]),
                            "per_seed": [dict(t.to_json(), seed=seed) for seed, t in zip(seeds, tests)],
                            "pooled": pooled.to_json()}
    entry["ci95_bootstrap"] = list(bootstrap_interval(a_correct, b_correct))
  if paired.p_value is not None:
    entry.update(test=T_TEST, test_p=paired.p_value)
  elif entry["per_example"] is not None:
    entry.update(test=EXACT + (", discordant examples pooled over seeds" if paired.n > 1 else ""),
                 test_p=entry["per_example"]["pooled"]["p_value"])
  return entry


def family(comparisons: list[dict]) -> dict:
  """Adds holm_p and distinguishable_from_zero (holm_p <= ALPHA; None without a test) to each comparison, in
  place; returns the family's description for report.json."""
  adjusted = holm([entry["test_p"] for entry in comparisons])
  for entry, holm_p in zip(comparisons, adjusted):
    entry["holm_p"] = holm_p
    entry["distinguishable_from_zero"] = None if holm_p is None else holm_p <= ALPHA
    entry["distinguishable_raw"] = None if entry["test_p"] is None else entry["test_p"] <= ALPHA
  members = [f"{entry['a']} − {entry['b']}" for entry in comparisons if entry["test_p"] is not None]
  return {"method": HOLM, "alpha": ALPHA, "size": len(members), "comparisons": members,
          "tests": {"seeds": T_TEST, "one seed or the same difference on every seed": EXACT},
          "interval": "ci95: Student t over seeds, raw (not adjusted); ci95_bootstrap: percentile, "
                      f"{BOOTSTRAP_RESAMPLES} resamples of seeds and of validation examples"}
