"""Mean, std and paired 95 % intervals on fabricated per-seed numbers with known answers."""

import math

import pytest

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
  assert result.to_json()["distinguishable_from_zero"] is True


def test_pairing_cancels_what_seeds_share():
  # Both models move together with the seed; the difference is always +0.5: an interval of width 0.
  a = [50.5, 60.5, 40.5]
  b = [50.0, 60.0, 40.0]
  paired = statistics.paired_difference("a", "b", a, b)
  assert paired.ci95 == pytest.approx((0.5, 0.5))
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
