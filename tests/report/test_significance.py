"""Mean, std, paired 95 % intervals, the exact per-example test and Holm's correction: on fabricated numbers
with known answers, against scipy, and against Holm's procedure written out independently."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kdjax.report import over_seeds
from kdjax.report import significance as statistics


def test_mean_and_sample_std():
  assert statistics.mean([1.0, 2.0, 3.0, 4.0, 5.0]) == 3.0
  assert statistics.std([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(math.sqrt(2.5))
  assert statistics.std([7.0]) is None


def test_paired_difference_known_interval():
  # d = a - b = 1, 2, 3, 4, 5: mean 3, std sqrt(2.5), t(0.975, 4) = 2.7764451
  a = [11.0, 12.0, 13.0, 14.0, 15.0]
  b = [10.0, 10.0, 10.0, 10.0, 10.0]
  result = statistics.paired_difference("student_kd", "student_ce", a, b)
  half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
  assert result.mean == 3.0 and result.n == 5
  assert result.ci95 == pytest.approx((3.0 - half, 3.0 + half), abs=1e-6)
  assert result.distinguishable is True
  assert result.to_json()["distinguishable_raw"] is True and result.p_value < 0.05


def test_pairing_cancels_what_seeds_share():
  # Both models move together with the seed; the difference stays near +0.5: a narrow interval away from 0.
  a = [50.5, 60.6, 40.4]
  b = [50.0, 60.0, 40.0]
  paired = statistics.paired_difference("a", "b", a, b)
  assert 0 < paired.ci95[0] < 0.5 < paired.ci95[1] < 1.0 and paired.distinguishable
  # Unpaired, the same numbers could not be told apart.
  assert statistics.confidence_interval(a)[0] < statistics.mean(b) < statistics.confidence_interval(a)[1]


def test_an_interval_that_straddles_zero_is_not_distinguishable():
  result = statistics.paired_difference("a", "b", [1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 0.0, 0.0])
  assert result.ci95[0] < 0 < result.ci95[1] and result.distinguishable is False


def test_one_seed_has_no_interval():
  result = statistics.paired_difference("a", "b", [3.0], [1.0])
  assert result.mean == 2.0 and result.std is None and result.ci95 is None and result.distinguishable is None


def test_unequal_lengths_are_refused():
  with pytest.raises(ValueError):
    statistics.paired_difference("a", "b", [1.0, 2.0], [1.0])


# --- tests against scipy, an independent Holm, and hand-computed cases ------------------------------------


def test_t_p_values_and_intervals_match_scipy_ttest_rel():
  rng = np.random.default_rng(1)
  for _ in range(200):
    n = int(rng.integers(2, 12))
    a, b = rng.normal(95, 1.5, n), rng.normal(94.5, 1.5, n)
    result = statistics.paired_difference("a", "b", list(a), list(b))
    reference = scipy_stats.ttest_rel(a, b)
    assert result.p_value == pytest.approx(float(reference.pvalue), rel=1e-9, abs=1e-12)
    low, high = reference.confidence_interval(0.95)
    assert result.ci95 == pytest.approx((float(low), float(high)), rel=1e-9, abs=1e-9)
    assert result.distinguishable == (reference.pvalue < 0.05)


def test_the_5_seed_digits_studys_paired_difference_is_reproduced():
  # The 5-seed digits study's per-seed top-1 (student_kd_ema, teacher), issue 21: -1.55, -2.66 to -0.45, p ~ 0.017.
  kd_ema = [95.00, 95.56, 93.33, 94.17, 95.00]
  teacher = [96.39, 97.22, 93.61, 96.94, 96.67]
  result = statistics.paired_difference("student_kd_ema", "teacher", kd_ema, teacher)
  assert round(result.mean, 2) == -1.55
  assert [round(x, 2) for x in result.ci95] == [-2.66, -0.45]
  assert round(result.p_value, 3) == 0.017


def _holm_step_down(p_values, alpha):
  """Holm's procedure as he stated it: test the ordered hypotheses at alpha/m, alpha/(m-1), ...; stop at the
  first that is not rejected. Returns the rejected indices."""
  order = sorted(range(len(p_values)), key=lambda i: p_values[i])
  rejected = set()
  for rank, index in enumerate(order):
    if p_values[index] > alpha / (len(p_values) - rank):
      break
    rejected.add(index)
  return rejected


def test_holm_adjusted_p_values_agree_with_the_step_down_procedure():
  rng = np.random.default_rng(2)
  for _ in range(500):
    m = int(rng.integers(1, 9))
    p_values = list(rng.uniform(0, 0.2, m) ** rng.uniform(1, 3))
    adjusted = statistics.holm(p_values)
    for alpha in (0.01, 0.05, 0.1):
      assert {i for i, p in enumerate(adjusted) if p <= alpha} == _holm_step_down(p_values, alpha)
    assert all(q >= p for p, q in zip(p_values, adjusted)) and all(q <= 1 for q in adjusted)


def test_holm_by_hand():
  # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max with the previous: 0.06.
  assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  # Untested comparisons stay out of the family (m = 2 here).
  assert statistics.holm([0.02, None, 0.03]) == pytest.approx([0.04, None, 0.04])
  # The case: p = 0.048 alone is "yes"; among four (the others larger) Holm does not say so.
  assert statistics.holm([0.048, 0.2, 0.5, 0.9])[0] > 0.05


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_examples():
  # 9 examples right only by a, 1 only by b: p = 2 * P(X <= 1 | 10, 1/2) = 2 * 11 / 1024.
  a = np.array([True] * 9 + [False] + [True] * 30 + [False] * 5)
  b = np.array([False] * 9 + [True] + [True] * 30 + [False] * 5)
  test = statistics.mcnemar(a, b)
  assert (test.a_only, test.b_only, test.examples) == (9, 1, 45)
  assert test.p_value == pytest.approx(22 / 1024)
  assert test.difference == pytest.approx(100 * 8 / 45)
  assert test.p_value == pytest.approx(scipy_stats.binomtest(1, 10, 0.5).pvalue)
  assert statistics.mcnemar(a, a).p_value == 1.0
  pooled = statistics.pooled_mcnemar([test, statistics.mcnemar(b, a)])
  assert (pooled.a_only, pooled.b_only, pooled.examples, pooled.p_value) == (10, 10, 90, 1.0)
  with pytest.raises(ValueError):
    statistics.mcnemar(a, a[:-1])


def test_bootstrap_interval():
  rng = np.random.default_rng(3)
  same = rng.random((3, 200)) < 0.9
  assert statistics.bootstrap_interval(same, same) == (0.0, 0.0)
  assert statistics.bootstrap_interval(np.ones((2, 50), bool), np.zeros((2, 50), bool)) == (100.0, 100.0)
  # One seed: the examples' bootstrap of a paired difference has the normal approximation's width,
  # sd = sqrt((b + c)/N - ((b - c)/N)^2) / sqrt(N).
  a, b = rng.random((1, 2000)) < 0.9, rng.random((1, 2000)) < 0.85
  low, high = statistics.bootstrap_interval(a, b)
  only_a, only_b = np.sum(a & ~b), np.sum(~a & b)
  sd = 100 * np.sqrt((only_a + only_b) / 2000 - ((only_a - only_b) / 2000) ** 2) / np.sqrt(2000)
  assert (high - low) == pytest.approx(2 * 1.96 * sd, rel=0.1)
  assert statistics.bootstrap_interval(a, b) == (low, high)   # deterministic


def test_zero_spread_is_never_a_zero_width_interval():
  paired = statistics.paired_difference("a", "b", [50.5, 60.5, 40.5], [50.0, 60.0, 40.0])
  assert paired.same_on_every_seed and paired.ci95 is None and paired.p_value is None
  assert paired.distinguishable is None


def _correct(rng, accuracy, seeds, examples):
  return rng.random((seeds, examples)) < accuracy


def test_compare_picks_its_test_and_the_family_corrects():
  rng = np.random.default_rng(4)
  a, b = _correct(rng, 0.95, 1, 360), _correct(rng, 0.80, 1, 360)
  top1 = lambda bits: [100 * float(row.mean()) for row in bits]
  one = statistics.compare("a", "b", top1(a), top1(b), a, b, seeds=[7])
  assert one["test"] == statistics.EXACT and one["ci95"] is None
  assert one["test_p"] == statistics.mcnemar(a[0], b[0]).p_value
  assert one["per_example"]["per_seed"][0]["seed"] == 7
  assert one["per_example"]["per_seed"][0]["difference"] == pytest.approx(one["mean"])
  # Several seeds with a spread: the paired t over seeds.
  a3, b3 = _correct(rng, 0.9, 3, 360), _correct(rng, 0.9, 3, 360)
  several = statistics.compare("a", "b", top1(a3), top1(b3), a3, b3)
  assert several["test"] == statistics.T_TEST
  assert several["test_p"] == pytest.approx(float(scipy_stats.ttest_rel(top1(a3), top1(b3)).pvalue))
  assert len(several["per_example"]["per_seed"]) == 3 and several["ci95_bootstrap"][0] < several["ci95_bootstrap"][1]
  # The same difference on every seed: the pooled per-example test, no interval.
  same = statistics.compare("a", "b", [95.0, 96.0], [94.0, 95.0], np.vstack([a, a]), np.vstack([b, b]))
  assert same["same_on_every_seed"] and same["ci95"] is None
  assert same["test"].startswith(statistics.EXACT) and "pooled" in same["test"]
  without = statistics.compare("a", "b", [95.0], [94.0])
  assert without["test_p"] is None
  comparisons = [one, several, same, without]
  description = statistics.family(comparisons)
  assert description["size"] == 3 and description["comparisons"] == ["a − b"] * 3
  adjusted = statistics.holm([one["test_p"], several["test_p"], same["test_p"]])
  assert [c["holm_p"] for c in comparisons] == adjusted + [None]
  assert [c["distinguishable_from_zero"] for c in comparisons] == [p <= 0.05 for p in adjusted] + [None]
  assert one["distinguishable_raw"] is True and without["distinguishable_from_zero"] is None


def test_a_p_value_that_underflowed_reads_below_1e_300_not_zero():
  """49 against 2,033 discordant images (a full Tiny ImageNet seed): the exact McNemar p underflows float64."""
  from kdjax.report import build
  p = statistics.mcnemar(np.r_[np.zeros(2033, bool), np.ones(49, bool)],
                         np.r_[np.ones(2033, bool), np.zeros(49, bool)]).p_value
  assert p == 0.0
  assert build._p(p) == "< 1e-300" and build._p(p, "=") == "< 1e-300"
  assert build._p(0.0123) == "0.012" and build._p(0.0123, "=") == "= 0.012"


def test_over_seeds_compares_the_mean_teacher_with_the_label_only_and_kd_students_and_keeps_the_originals_six():
  def report(top1):
    return {"models": {name: {"val_top1": value, "epochs": []} for name, value in top1.items()}}
  original = {"teacher": 20.0, "student_ce": 21.0, "student_kd": 19.0, "student_kd_ema": 1.0, "teacher_ema": 1.0}
  pairs = lambda summary: [(c["a"], c["b"]) for c in summary["comparisons"]]
  six = pairs(over_seeds.summarize([report(original), report(original)], [0, 1]))
  assert len(six) == 6 and not any("mean_teacher" in a for a, _ in six)
  with_mean_teacher = dict(original, student_mean_teacher=22.0, mean_teacher=22.5)
  nine = pairs(over_seeds.summarize([report(with_mean_teacher), report(with_mean_teacher)], [0, 1]))
  assert nine[:6] == six and nine[6:] == [("student_mean_teacher", "student_ce"), ("student_mean_teacher", "student_kd"),
                                          ("mean_teacher", "student_ce")]
