"""Several studies side by side: one column per study, never merged by name; one Holm family over every row."""

import pytest

from kdjax.report import answer
from kdjax.report import significance


def _report(top1: dict) -> dict:
  return {"models": {name: {"val_top1": value, "epochs": []} for name, value in top1.items()}}


def _study(seeds, rows):
  """rows: {model: [top-1 per seed]} -> (seeds, one report per seed)."""
  return list(seeds), [_report({name: values[i] for name, values in rows.items()}) for i in range(len(seeds))]


ORIGINAL = {"teacher": [20.6, 21.1, 20.3], "student_ce": [21.4, 21.2, 21.1], "student_kd": [18.9, 19.5, 19.0],
            "student_kd (EMA weights)": [19.0, 19.9, 19.2]}
MEAN_TEACHER = {"teacher": [20.6, 21.1, 20.3], "student_ce": [21.4, 21.2, 21.1], "student_kd": [21.5, 21.3, 21.6],
                "student_mean_teacher": [22.0, 22.4, 21.9], "mean_teacher": [23.1, 23.0, 22.8]}


def test_each_study_is_a_column_and_a_name_is_never_merged_across_studies():
  built = answer.build({"original": _study((0, 1, 2), ORIGINAL), "mean_teacher.py": _study((0, 1, 2), MEAN_TEACHER)})
  original, mean_teacher = built["studies"]["original"]["models"], built["studies"]["mean_teacher.py"]["models"]
  assert original["student_kd"]["val_top1"] == pytest.approx(19.1333333)
  assert mean_teacher["student_kd"]["val_top1"] == pytest.approx(21.4666667)   # CE + KD: another model
  assert "mean_teacher" not in original
  text = answer.markdown(built)
  assert "| model | original (3 seeds) | mean_teacher.py (3 seeds) |" in text
  rows = [line for line in text.splitlines() if line.startswith("| student_kd")]
  assert rows[0].startswith("| student_kd | 19.13 ± 0.32 | 21.47 ± 0.15 |")
  assert rows[1].startswith("| student_kd (EMA weights) | 19.37 ± 0.47 |  |")   # after its model, blank elsewhere


def test_one_holm_family_over_every_studys_comparisons():
  studies = {"original": _study((0, 1, 2), ORIGINAL), "mean_teacher.py": _study((0, 1, 2), MEAN_TEACHER)}
  built = answer.build(studies)
  rows = built["comparisons"]
  assert {row["study"] for row in rows} == {"original", "mean_teacher.py"}
  tested = [row for row in rows if row["test_p"] is not None]
  assert built["comparison_family"]["size"] == len(tested) > 3
  assert [row["holm_p"] for row in tested] == significance.holm([row["test_p"] for row in tested])
  # a study's family alone would adjust less: the union is what the table's reader sees at once
  alone = answer.build({"original": studies["original"]})["comparisons"]
  assert any(row["holm_p"] > single["holm_p"] for row in rows for single in alone
             if (row["study"], row["a"], row["b"]) == ("original", single["a"], single["b"]))
  line = next(line for line in answer.markdown(built).splitlines()
              if line.startswith("| original | student_kd − student_ce |"))
  assert "| -2.50, -1.70, -2.10 | -2.10 |" in line


def test_model_order_is_the_phase_order_with_ema_weights_after_their_model():
  assert answer.model_order(["mean_teacher", "student_kd_ema@0.99", "student_ce (EMA weights)", "teacher",
                             "student_ce"]) == ["teacher", "student_ce", "student_ce (EMA weights)", "mean_teacher",
                                                "student_kd_ema@0.99"]
