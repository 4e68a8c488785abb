"""The EMA, understood: the sweep's rows and plot, and the collapse diagnostics."""

import json
import math

import numpy as np
import pytest

from kdjax.report import collapse
from kdjax.study import experiment
from kdjax import phases
from kdjax.report import sweep
from tests.conftest import tiny_config


def test_relative_distance_over_the_paired_teacher_tensors():
  reference = {"conv1": {"kernel": np.full((2,), 3.0), "bias": np.zeros(1)}, "conv2": {"kernel": np.ones(4)}}
  moved = {"conv1": {"kernel": np.full((2,), 4.0), "bias": np.zeros(1)}, "conv2": {"kernel": np.full(4, 9.0)}}
  pairs = [(("conv1", "kernel"), ("conv1", "kernel")), (("conv1", "bias"), ("conv1", "bias"))]
  # conv2 is not updated by the original's EMA here, so it does not count: |(1,1)| / |(3,3)| = 1/3.
  assert collapse.relative_distance(moved, reference, pairs) == pytest.approx(1 / 3)


def test_soft_target_entropy_is_one_when_flat_and_near_zero_when_one_hot():
  assert collapse.soft_target_entropy(np.zeros((3, 10)), 4.0) == pytest.approx(1.0)
  peaked = np.full((2, 10), -1e4)
  peaked[:, 0] = 0.0
  assert collapse.soft_target_entropy(peaked, 4.0) < 1e-6
  logits = np.array([[2.0, 0.0]])
  p = np.exp(logits / 2) / np.exp(logits / 2).sum()
  assert collapse.soft_target_entropy(logits, 2.0) == pytest.approx(-(p * np.log(p)).sum() / math.log(2))


def _point(step, teacher, student, entropy, distance, loss):
  return {"epoch": 1, "step": step, "distance": distance, "entropy": entropy, "kd_loss": loss,
          "teacher_top1": teacher, "student_top1": student}


def test_findings_say_when_the_teacher_falls_below_the_student():
  points = [_point(0, 9.0, 0.5, 0.40, 0.0, None), _point(25, 6.0, 3.0, 0.6, 0.1, 0.2),
            _point(50, 2.0, 4.0, 0.95, 0.2, 0.8), _point(75, 0.5, 1.0, 0.99, 0.3, 4.6)]
  text = " ".join(collapse.findings(points, "teacher_ema", "student_kd_ema"))
  assert "falls below student_kd_ema at step 50 (epoch 1): 2.00 % vs 4.00 %" in text
  assert "from 0.40 to 0.99" in text and "from step 50" in text
  assert "30.0% of its norm" in text and "peak 4.6" in text
  steady = [_point(0, 9.0, 0.5, 0.4, 0.0, None), _point(25, 9.0, 3.0, 0.4, 0.01, 0.2)]
  assert "stays at or above" in collapse.findings(steady, "teacher_ema", "student_kd_ema")[0]


def test_findings_say_when_the_teacher_halves_and_reaches_chance():
  # 200 classes: chance is 0.50 %; a dip to chance at step 50 that recovers does not count, step 100 does.
  points = [_point(0, 9.0, 0.3, 0.97, 0.0, None), _point(25, 4.0, 1.0, 0.97, 0.1, 1.2),
            _point(50, 0.6, 0.5, 0.98, 0.2, 0.9), _point(75, 1.0, 0.5, 0.98, 0.3, 0.1),
            _point(100, 0.5, 0.5, 0.98, 0.4, 0.01), _point(125, 0.7, 0.5, 0.98, 0.5, 0.005)]
  text = " ".join(collapse.findings(points, "teacher_ema", "student_kd_ema", num_classes=200))
  assert "It has lost half its top-1 by step 25 (epoch 1: 4.00 %)" in text
  assert "at chance level (100/K = 0.50 %) from step 100 (epoch 1) on" in text
  assert "chance" not in " ".join(collapse.findings(points, "teacher_ema", "student_kd_ema"))
  steady = [_point(0, 9.0, 0.5, 0.4, 0.0, None), _point(25, 8.0, 3.0, 0.4, 0.01, 0.2)]
  assert "half" not in " ".join(collapse.findings(steady, "teacher_ema", "student_kd_ema", num_classes=10))


def test_sweep_phase_names_round_trip():
  for decay, warmup in ((0.9, False), (0.99, True), (0.9999, False)):
    variant = phases.sweep_phase(decay, warmup)
    assert phases.phase(variant.name) == variant
    assert [m.name for m in phases.models_of(variant.name, 0.0)] == [variant.name, "teacher_ema" + variant.variant]
    assert phases.model("teacher_ema" + variant.variant).phase == variant.name
  for bad in ("student_kd_ema@", "student_kd_ema@x", "student_kd@0.9", "student_kd_ema@0.90"):
    with pytest.raises(KeyError):
      phases.phase(bad)


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sweep")
  config = tiny_config(phases=phases.PHASE_NAMES, **{"ema.sweep": (0.5, 0.999), "ema.sweep_warmup": (False,),
                                                     "ema.diagnostics_every": 3})
  return workdir, config, experiment.train_and_evaluate(config, workdir)


def test_the_sweep_adds_rows_and_a_plot(sweep_run):
  workdir, config, report = sweep_run
  models = report["models"]
  # alpha = 0.999 without warm-up is student_kd_ema itself: no duplicate row.
  assert {"student_kd_ema@0.5", "teacher_ema@0.5"} <= set(models) and "student_kd_ema@0.999" not in models
  rows = report["ema_sweep"]
  assert [row["alpha"] for row in rows] == [0.5, 0.999, 1.0]
  assert rows[0]["student"] == models["student_kd_ema@0.5"]["val_top1"]
  assert rows[1]["teacher"] == models["teacher_ema"]["val_top1"]
  assert rows[2]["student"] == models["student_kd"]["val_top1"] and rows[2]["teacher"] == models["teacher"]["val_top1"]
  assert (workdir / "ema_sweep.png").stat().st_size > 0
  assert "| 0.5 | no |" in (workdir / "report.md").read_text()
  assert sweep.points(config, models) == rows


def test_the_variant_equals_a_run_with_that_alpha(sweep_run, tmp_path):
  _, _, report = sweep_run
  alone = experiment.train_and_evaluate(tiny_config(phases=("teacher", "student_kd_ema"), **{"ema.decay": 0.5}),
                                        tmp_path / "alone")
  for field in ("val_top1", "val_loss"):
    assert report["models"]["student_kd_ema@0.5"][field] == alone["models"]["student_kd_ema"][field]
    assert report["models"]["teacher_ema@0.5"][field] == alone["models"]["teacher_ema"][field]


def test_collapse_points_are_measured_and_reported(sweep_run):
  workdir, _, report = sweep_run
  points = report["models"]["teacher_ema@0.5"]["collapse"]
  # The start, every 3 steps of the first epoch (8 steps: 3, 6), and each epoch's end (8, 16).
  assert [(p["epoch"], p["step"]) for p in points] == [(0, 0), (1, 3), (1, 6), (1, 8), (2, 16)]
  assert points[0]["distance"] == 0.0 and points[0]["kd_loss"] is None
  assert all(b["distance"] > a["distance"] for a, b in zip(points, points[1:]))  # alpha 0.5 keeps pulling
  assert all(0.0 <= p["entropy"] <= 1.0 for p in points)
  assert points[-1]["teacher_top1"] == report["models"]["teacher_ema@0.5"]["val_top1"]
  assert points[-1]["student_top1"] == report["models"]["student_kd_ema@0.5"]["val_top1"]
  saved = json.loads((workdir / "report.json").read_text())["models"]["teacher_ema"]["collapse"]
  assert len(saved) == 5
  assert (workdir / "ema_collapse.png").stat().st_size > 0
  assert "**teacher_ema@0.5** (ema_collapse.png)" in (workdir / "report.md").read_text()
