"""Two reports side by side (kdjax/report/compare.py, `inspection --compare`): the numbers, config and
environment fields that differ."""

import json

import pytest

from kdjax.cli import inspection
from kdjax.report import compare


def _report(top1: float, isa: str, temperature: float = 4.0) -> dict:
  return {"models": {"teacher": {"val_top1": 96.94, "val_loss": 0.1, "train_seconds": 40.0},
                     "student_kd": {"val_top1": top1, "val_loss": 0.2, "train_seconds": 9.0,
                                    "epochs": [{"epoch": 1, "val_top1": top1, "seconds": 1.0}]}},
          "comparisons": [{"a": "student_kd", "b": "teacher", "difference": top1 - 96.94, "verdict": "noise"}],
          "config": {"kd": {"temperature": temperature}},
          "environment": {"cpu": {"model": "AMD EPYC", "isa_class": isa}, "devices": ["cpu:0"]},
          "wall_seconds": 50.0}


def test_compare_names_numbers_and_environment_that_differ_and_ignores_timings():
  result = compare.compare(_report(95.56, "avx512"), _report(95.83, "avx2"))
  paths = {entry["path"]: entry for entry in result["numbers"]}
  assert set(paths) == {"models.student_kd.val_top1", "models.student_kd.epochs.0.val_top1",
                        "comparisons.0.difference"}
  assert paths["models.student_kd.val_top1"]["difference"] == pytest.approx(0.27)
  assert [entry["path"] for entry in result["environment"]] == ["environment.cpu.isa_class"]
  assert result["config"] == []
  text = compare.format_comparison(result, "A", "B")
  assert "models.student_kd.val_top1: 95.56 -> 95.83  (+0.27)" in text
  assert "environment.cpu.isa_class: avx512 -> avx2" in text and "config: the same" in text
  same = compare.compare(_report(95.56, "avx2"), _report(95.56, "avx2"))
  assert same["numbers"] == [] and same["environment"] == []
  assert "numbers: all" in compare.format_comparison(same, "A", "B")


def test_inspection_compare_prints_the_differences_and_refuses_a_missing_report(tmp_path, capsys):
  for name, top1, temperature in (("a", 95.56, 4.0), ("b", 95.28, 2.0)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "report.json").write_text(json.dumps(_report(top1, "avx2", temperature)))
  assert inspection.main([str(tmp_path / "a"), "--compare", str(tmp_path / "b")]) == 0
  out = capsys.readouterr().out
  assert "models.student_kd.val_top1: 95.56 -> 95.28" in out and "config.kd.temperature: 4 -> 2" in out
  assert "environment: the same" in out
  (tmp_path / "c").mkdir()
  assert inspection.main([str(tmp_path / "a"), "--compare", str(tmp_path / "c")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "report.json" in err and str(tmp_path / "c") in err
