"""report.json's content, report.md and curves.png (kdjax/report/build.py): the answer sentence, a model that ran
away, a teacher no better than chance, the curves' panels and axes."""

import json
import math

import matplotlib.pyplot as plt
import pytest

from kdjax.report import build as report_lib

from tests.support import ckpt as support
from tests.support.figures import _drawn
from tests.support.figures import _legends_below_their_panels


def test_curves_have_a_title_no_offset_labels_legends_off_the_data_and_one_x_range():
  from kdjax.report import build as report_lib
  from kdjax.report import figures
  from kdjax.report.build import ModelResult
  results = {}
  for name, phase, base in (("teacher", "teacher", 1.0), ("student_kd", "student_kd", 3.045e-3)):
    result = ModelResult(name=name, net="student", phase=phase, params=0, flops_per_image=0)
    # A short run's KD loss moving in its 7th digit: matplotlib would label the axis `1e-7+3.045e-3`.
    result.epochs = [{"epoch": e, "train_loss": base + 1e-7 * e, "val_loss": 1.0, "val_top1": 50.0 + e}
                     for e in (1, 2, 3)]
    result.final = {"val_top1": 53.0}
    results[name] = result
  report = {"dataset": {"name": "digits", "train_examples": 240, "val_examples": 120},
            "config": {"epochs": 3, "kd": {"temperature": 4.0}, "phases": ["teacher", "student_kd"], "num_seeds": 1}}
  title = figures.title(report)
  assert "digits" in title and "1 seed" in title and "teacher, student_kd" in title and "T = 4.0" in title
  figure = _drawn(report_lib.curves_figure(results, title))
  assert figure.get_suptitle() == title
  visible = [axis for axis in figure.axes if axis.get_visible()]
  assert all(axis.yaxis.get_major_formatter().get_offset() == "" for axis in visible)
  assert len({axis.get_xlim() for axis in visible}) == 1
  _legends_below_their_panels(figure)


def _result(name, phase, net, epochs, train_loss=True):
  rows = [{"epoch": epoch, "train_loss": (1.0 / epoch if train_loss else None), "val_loss": 1.0,
           "val_top1": 50.0 + epoch} for epoch in range(1, epochs + 1)]
  return report_lib.ModelResult(name=name, net=net, phase=phase, params=1, flops_per_image=1, epochs=rows,
                                final=dict(rows[-1]))


def test_curves_single_epoch_panels_and_integer_ticks():
  results = {"teacher": _result("teacher", "teacher", "teacher", 1),
             "student_kd": _result("student_kd", "student_kd", "student", 1),
             "student_kd_ema": _result("student_kd_ema", "student_kd_ema", "student", 1),
             "teacher_ema": _result("teacher_ema", "student_kd_ema", "teacher", 1, train_loss=False)}
  figure = report_lib.curves_figure(results)
  panels = {axis.get_title(): axis for axis in figure.axes if axis.get_visible()}
  assert list(panels) == ["train loss: cross-entropy on labels", "train loss: KD objective",
                          "validation top-1", "the original's EMA loop: validation top-1"]
  legend = lambda title: [text.get_text() for text in panels[title].get_legend().get_texts()]
  assert legend("train loss: cross-entropy on labels") == ["teacher"]
  assert legend("train loss: KD objective") == ["student_kd", "student_kd_ema"]
  assert legend("the original's EMA loop: validation top-1")[:2] == ["student_kd_ema", "teacher_ema"]
  for axis in panels.values():
    ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert ticks == [1.0], axis.get_title()
  plt.close(figure)


def _report(teacher_correct=90, teacher_loss=0.3, student_loss=0.5, examples=100, num_classes=10):
  entry = lambda correct, loss: {"val_top1": 100.0 * correct / examples, "val_top5": 100.0, "val_loss": loss,
                                 "val_correct": correct, "params": 1, "train_seconds": 1.0}
  return {"dataset": {"name": "digits", "train_examples": 200, "val_examples": examples,
                      "num_classes": num_classes, "image_shape": [16, 16, 3]},
          "models": {"teacher": entry(teacher_correct, teacher_loss), "student_kd": entry(80, student_loss)},
          "config": {"optimizer": {"learning_rate": 10.0}},
          "environment": {"jax": "0", "flax": "0", "backend": "cpu", "devices": ["cpu:0"]}}


def test_a_model_whose_loss_ran_away_is_named_first_in_the_report():
  from kdjax.report import build
  assert build.ran_away(_report()) == []
  assert build.ran_away(_report(student_loss=100 * math.log(10) * 0.99)) == []   # under two orders of magnitude
  report = _report(teacher_loss=2.7e13)
  [sentence] = build.ran_away(report)
  assert sentence.startswith("teacher ended far from where it started: its validation loss is 2.7e+13, 13 orders "
                             "of magnitude above ln 10 = 2.30")
  assert "optimizer.learning_rate=10.0" in sentence
  answer = build.markdown(report).split("\n\n")[2]   # the paragraph after the title and the table
  assert answer.startswith(sentence) and "| 2.7e+13 |" in build.markdown(report)


def test_a_teacher_no_better_than_chance_is_said_first():
  """One-sided binomial: 12 of 100 right among 10 classes, P(X >= 12 | Binomial(100, 0.1)) = 0.297, is not
  distinguishable from chance; 20 of 100 (p = 0.0020) is."""
  from kdjax.report import build
  tail = lambda k, n, p: sum(math.comb(n, i) * p**i * (1 - p)**(n - i) for i in range(k, n + 1))
  test = build.teacher_chance(_report(teacher_correct=12))
  assert test["p_value"] == pytest.approx(tail(12, 100, 0.1), rel=1e-9) and not test["distinguishable"]
  report = _report(teacher_correct=12)
  sentence = build.chance_sentence(report)
  assert sentence.startswith("The teacher is not distinguishable from chance: 12 of 100 validation images right "
                             "(12.00 %) against 10.00 % for a guess among 10 classes (one-sided binomial p = 0.3)")
  assert build.markdown(report).split("\n\n")[2].startswith(sentence)
  assert build.teacher_chance(_report(teacher_correct=20))["p_value"] == pytest.approx(tail(20, 100, 0.1))
  assert build.chance_sentence(_report(teacher_correct=20)) == ""
  assert build.teacher_chance({"models": {}, "dataset": {}}) is None   # no teacher: nothing to say


def test_adam_at_learning_rate_10_warns_and_report_md_says_so(tmp_path):
  config = support.study_config(phases=("teacher",), epochs=1,
                                **{"optimizer.learning_rate": 10.0, "ema.student_decay": 0.0})
  _, warnings = support.run_in_process(config, tmp_path / "run")
  report = json.loads((tmp_path / "run" / "report.json").read_text())
  assert report["models"]["teacher"]["val_loss"] > 1e3
  assert "kdjax: warning: teacher ended far from where it started" in warnings
  text = (tmp_path / "run" / "report.md").read_text()
  assert "teacher ended far from where it started" in text and "optimizer.learning_rate=10.0" in text
