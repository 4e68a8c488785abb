"""The EMA, understood: the sweep's rows and plot, and the collapse diagnostics."""

import json
import math

import numpy as np
import pytest

from kdjax.report import collapse
from kdjax.study import experiment
from kdjax import phases
from kdjax.report import sweep
from kdjax.study import builder

from tests.conftest import tiny_config
from tests.support.figures import _drawn
from tests.support.figures import _legends_below_their_panels


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


def _point(step, teacher, student, entropy, distance, loss, epoch=1, full=None):
  return {"epoch": epoch, "step": step, "distance": distance, "entropy": entropy, "kd_loss": loss,
          "probe_size": 32, "probe_teacher_top1": teacher, "probe_student_top1": student,
          "teacher_top1": full, "student_top1": None if full is None else student, "seconds": 0.5}


def test_the_schedule_is_log_spaced_through_the_whole_phase():
  # Digits, the seed's 10 epochs of 23 steps: 8 points a decade, 1 to 178.
  assert collapse.schedule(230, 8) == [1, 2, 3, 4, 6, 7, 10, 13, 18, 24, 32, 42, 56, 75, 100, 133, 178]
  assert collapse.schedule(230, 0) == [] and collapse.schedule(1, 8) == []
  assert collapse.schedule(15630, 8)[-1] == 13335   # full Tiny ImageNet, 10 epochs: up to the last epoch
  # An epoch's end is measured anyway (on the whole validation split), not again.
  assert collapse.mid_epoch_steps(16, 8, 8) == {1, 2, 3, 4, 6, 7, 10, 13}
  assert 8 not in collapse.mid_epoch_steps(100, 4, 8) and 7 in collapse.mid_epoch_steps(100, 4, 8)


def test_the_probe_costs_at_most_its_budget():
  # points * P <= 5 % of the images the phase trains on, within [32, 1000] and the validation split.
  assert collapse.probe_size(360, 10 * 1437, 28) == 32          # digits: the floor (25 would fit the budget)
  assert len(collapse.mid_epoch_steps(10 * 250, 250, 8)) + 10 + 1 == 35
  assert collapse.probe_size(5000, 10 * 16000, 35) == 228       # Tiny ImageNet dev subset (24 + 10 + 1 points)
  assert collapse.probe_size(10000, 10 * 100000, 43) == 1000    # full Tiny ImageNet: the cap
  assert collapse.probe_size(20, 10 * 100000, 44) == 20
  probe = collapse.probe_indices(5000, 228)
  assert len(set(probe)) == 228 and list(probe) == sorted(probe)
  assert list(collapse.probe_indices(5000, 100)) == sorted(set(probe) & set(collapse.probe_indices(5000, 100)))


def test_findings_bracket_when_the_teacher_falls_below_the_student_and_halves():
  points = [_point(0, 9.0, 0.5, 0.40, 0.0, None, epoch=0, full=9.2), _point(25, 6.0, 3.0, 0.6, 0.1, 0.2),
            _point(50, 2.0, 4.0, 0.95, 0.2, 0.8), _point(75, 0.5, 1.0, 0.99, 0.3, 4.6, full=0.7)]
  text = " ".join(collapse.findings(points, "teacher_ema", "student_kd_ema", temperature=4.0, train_seconds=20.0))
  assert ("falls below student_kd_ema on the 32-image probe between step 25 and step 50 (epoch 1): 2.00 % vs "
          "4.00 % at step 50, from 9.00 % at the start") in text
  assert ("It has lost half its top-1 on the 32-image probe between step 25 and step 50 (epoch 1) "
          "(6.00 % then 2.00 %; moved 10.0% then 20.0% of its norm)") in text
  assert "entropy at T = 4 on the 32-image probe goes from 0.40 to 0.99" in text
  assert "30.0% of its norm" in text and "peak 4.6" in text
  assert "Measured at 4 points" in text and "they took 2.0 s, 10.0 % of the phase's 20 s of training" in text
  steady = [_point(0, 9.0, 0.5, 0.4, 0.0, None), _point(25, 9.0, 3.0, 0.4, 0.01, 0.2)]
  assert "stays at or above" in collapse.findings(steady, "teacher_ema", "student_kd_ema")[0]
  # Points saved before the probe existed: the whole validation split's top-1.
  old = [{k: v for k, v in p.items() if not k.startswith("probe")} for p in steady]
  for p in old:
    p["teacher_top1"], p["student_top1"] = 9.0, 0.5
  assert "on the validation split" in collapse.findings(old, "teacher_ema", "student_kd_ema")[0]


def test_findings_test_chance_on_the_whole_validation_split():
  # 200 classes, 5,000 images: chance 0.50 % = 25 images. 0.88 % (44) is above it (exact binomial p = 3.6e-4),
  # 0.56 % (28) is not distinguishable from it.
  def run(*ends, start=9.0):
    points = [_point(0, start, 0.3, 0.97, 0.0, None, epoch=0, full=start)]
    for epoch, top1 in enumerate(ends, start=1):
      points += [_point(epoch * 25 - 10, top1, 0.5, 0.98, 0.1 * epoch, 0.5, epoch=epoch),
                 _point(epoch * 25, top1, 0.5, 0.98, 0.1 * epoch, 0.5, epoch=epoch, full=top1)]
    return " ".join(collapse.findings(points, "teacher_ema", "student_kd_ema", num_classes=200,
                                      val_examples=5000))
  assert ("ends at 0.56 %, not distinguishable from chance (1/K = 0.50 %; exact binomial p = 0.3) at every "
          "epoch's end from epoch 3 on") in run(4.0, 0.88, 0.5, 0.56)
  assert "ends at 0.88 %, above chance (1/K = 0.50 %; exact binomial p = 0.00036)" in run(4.0, 0.5, 0.88)
  assert "chance" not in run(0.5, 0.56, start=0.56)   # never above chance: nothing to say about reaching it


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
  config = tiny_config(phases=phases.PHASE_NAMES, **{"ema.sweep": (0.5, 0.999), "ema.sweep_warmup": (False,)})
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
  assert sweep.points(builder.ema_sweep(config), models) == rows


def test_the_variant_equals_a_run_with_that_alpha_and_measuring_changes_nothing(sweep_run, tmp_path):
  # The sweep measured its teacher_ema@0.5 at 8 log-spaced points a decade; this run measures epoch ends only.
  _, _, report = sweep_run
  alone = experiment.train_and_evaluate(tiny_config(phases=("teacher", "student_kd_ema"),
                                                    **{"ema.decay": 0.5, "ema.diagnostics_per_decade": 0}),
                                        tmp_path / "alone")
  for field in ("val_top1", "val_loss"):
    assert report["models"]["student_kd_ema@0.5"][field] == alone["models"]["student_kd_ema"][field]
    assert report["models"]["teacher_ema@0.5"][field] == alone["models"]["teacher_ema"][field]
  for name, alone_name in (("student_kd_ema@0.5", "student_kd_ema"), ("teacher_ema@0.5", "teacher_ema")):
    assert report["models"][name]["epochs"] == alone["models"][alone_name]["epochs"]   # train and val, bit for bit
  assert [(p["epoch"], p["step"]) for p in alone["models"]["teacher_ema"]["collapse"]] == [(0, 0), (1, 8), (2, 16)]


def test_collapse_points_are_measured_and_reported(sweep_run):
  workdir, _, report = sweep_run
  points = report["models"]["teacher_ema@0.5"]["collapse"]
  # The start, the log-spaced steps 1, 2, 3, 4, 6, 7, 10, 13 of the 16, and each epoch's end (8, 16).
  assert [(p["epoch"], p["step"]) for p in points] == [(0, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 6), (1, 7),
                                                       (1, 8), (2, 10), (2, 13), (2, 16)]
  assert points[0]["distance"] == 0.0 and points[0]["kd_loss"] is None
  assert all(b["distance"] > a["distance"] for a, b in zip(points, points[1:]))  # alpha 0.5 keeps pulling
  assert all(0.0 <= p["entropy"] <= 1.0 for p in points)
  assert all(p["probe_size"] == 32 and p["seconds"] >= 0 for p in points)
  assert all(round(p["probe_teacher_top1"] * 32 / 100, 9).is_integer() for p in points)
  # The whole validation split only at the start and the epochs' ends.
  assert [p["step"] for p in points if p["teacher_top1"] is not None] == [0, 8, 16]
  assert points[-1]["teacher_top1"] == report["models"]["teacher_ema@0.5"]["val_top1"]
  assert points[-1]["student_top1"] == report["models"]["student_kd_ema@0.5"]["val_top1"]
  saved = json.loads((workdir / "report.json").read_text())["models"]["teacher_ema"]["collapse"]
  assert len(saved) == 11
  assert (workdir / "ema_collapse.png").stat().st_size > 0
  assert "**teacher_ema@0.5** (ema_collapse.png)" in (workdir / "report.md").read_text()


def test_the_schedules_field_is_checked_and_an_older_runs_field_does_not_block_resume():
  from kdjax import errors
  from kdjax.config import defaults as config_lib
  from kdjax.config import validation
  for bad in (-1, 101):   # (ConfigDict itself refuses a float or a bool in an int field)
    with pytest.raises(errors.ConfigError, match="ema.diagnostics_per_decade"):
      validation.validate(tiny_config(**{"ema.diagnostics_per_decade": bad}))
  current = json.loads(config_lib.default_config().to_json_best_effort())
  older = json.loads(json.dumps(current))
  del older["ema"]["diagnostics_per_decade"]
  older["ema"]["diagnostics_every"] = 25   # what a workdir written before the log-spaced schedule holds
  assert config_lib.differences(older, current) == []


# One colour per model in every figure ---------------------------------------------------------------------------

def _line_colors(figure) -> dict[str, str]:
  """label -> colour (hex) of every line drawn in `figure`'s panels."""
  from matplotlib import colors
  return {line.get_label(): colors.to_hex(line.get_color()) for axis in figure.axes for line in axis.get_lines()
          if not line.get_label().startswith("_")}


def test_a_model_has_one_colour_in_every_figure(monkeypatch):
  """curves.png, ema_collapse.png and the over-seeds curves draw a model in figures.color(model): student_kd green
  in one and orange in another was issue 34's report. A model's "(EMA weights)" row shares its colour."""
  from matplotlib import colors
  from kdjax.report import build as report_lib
  from kdjax.report import figures
  from kdjax.report import over_seeds
  names = ["teacher", "student_ce", "student_kd", "student_kd_ema", "teacher_ema", "student_kd (EMA weights)"]
  expected = {name: colors.to_hex(figures.color(name)) for name in names}
  assert len(set(expected.values())) == 5 and expected["student_kd (EMA weights)"] == expected["student_kd"]
  sweep_names = [f"{model}@{alpha}{warmup}" for model in ("student_kd_ema", "teacher_ema")
                 for alpha in ("0.9", "0.99", "0.999", "0.9999") for warmup in ("", "+warmup")]
  assert len({figures.color(name) for name in sweep_names + names[:5]}) == len(sweep_names) + 5   # all apart

  drawn = []
  monkeypatch.setattr(figures, "save", lambda figure, path: drawn.append(figure))
  rows = lambda: [{"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.0, "val_top1": 50.0 + epoch}
                  for epoch in (1, 2)]
  # curves.png with the models in one order ...
  results = {name: report_lib.ModelResult(name=name, net="teacher" if "teacher" in name else "student",
                                          phase=name.removesuffix(" (EMA weights)").replace("teacher_ema",
                                                                                            "student_kd_ema"),
                                          params=1, flops_per_image=1, epochs=rows(), final={"val_top1": 52.0})
             for name in names}
  curves = _line_colors(report_lib.curves_figure(results))
  # ... the over-seeds curves with another (a figure's order must not decide a colour) ...
  report = {"num_seeds": 2, "models": {name: {"per_seed": [{"epochs": rows()}, {"epochs": rows()}]}
                                       for name in reversed(names)}}
  monkeypatch.setattr(over_seeds, "mean_curve", lambda per_seed, key: [
      {"epoch": row["epoch"], "mean": row[key], "std": 0.0} for row in per_seed[0]["epochs"]])
  over_seeds.plot(report, "unused.png")
  # ... and the collapse diagnostics of one EMA-updated teacher and its student.
  points = [{"step": step, "distance": 0.1, "entropy": 0.5, "kd_loss": 1.0, "teacher_top1": 50.0,
             "student_top1": 40.0} for step in (0, 1, 2)]
  collapse.plot({"teacher_ema": points}, "unused.png")
  seeds, diagnostics = (_line_colors(figure) for figure in drawn)
  for name in names:
    assert curves[name] == expected[name] and seeds[name] == expected[name], name
  assert diagnostics["teacher_ema"] == expected["teacher_ema"]
  assert diagnostics["student_kd_ema"] == expected["student_kd_ema"]
  assert diagnostics["student_kd_ema (against teacher_ema)"] == expected["student_kd_ema"]


# What the points cost -------------------------------------------------------------------------------------------

def _cost_points(count: int, seconds: float, probe: int, compile_seconds: float = 0.0) -> list[dict]:
  return [{"epoch": 1, "step": step, "distance": 0.0, "entropy": 0.5, "kd_loss": None, "probe_size": probe,
           "probe_teacher_top1": 50.0, "probe_student_top1": 40.0, "teacher_top1": None, "student_top1": None,
           "seconds": seconds + (compile_seconds if step == 0 else 0.0),
           "compile_seconds": compile_seconds if step == 0 else 0.0} for step in range(count)]


def test_the_cost_sentence_states_the_bound_for_what_it_holds():
  """Within 5 % of the phase's training time: the time and the share. Past it, why: the probe's 32-image floor on a
  short phase (and the phase length at which the floor fits), the one-off compile, or small batches (issue 34: a
  1-epoch report said '50.6 % of the phase's 8 s' and nothing more)."""
  cost = lambda points, train: collapse.findings(points, "teacher_ema", "student_kd_ema",
                                                 train_seconds=train)[-1]
  assert cost(_cost_points(10, 0.1, 228), 100.0) == (
      "Measured at 10 points (step 0 to 9, log-spaced, and each epoch's end); they took 1.0 s, 1.0 % of the "
      "phase's 100 s of training.")
  short = cost(_cost_points(11, 0.9, 32, compile_seconds=1.0), 35.0)
  assert short.startswith("Measured at 11 points (step 0 to 10, log-spaced, and each epoch's end); they took 10.9 s "
                          "(1.0 s of it compiling the probe's forwards, once a process), 31.1 % of the phase's 35 s")
  assert short.endswith(": above the 5 % budget, as the probe is at its floor of 32 images, within 5 % of the "
                        "training images only for a phase of 7,040 or more.")
  compiled = cost(_cost_points(19, 0.01, 42, compile_seconds=4.0), 8.0)
  assert compiled.endswith("as without the compile they are within it.")
  slow = cost(_cost_points(19, 0.1, 42), 8.0)
  assert slow.endswith("as its 42-image batches cost more per image than training batches.")


def test_each_point_says_what_its_compile_took(sweep_run):
  _, _, report = sweep_run
  for name in ("teacher_ema", "teacher_ema@0.5"):
    points = report["models"][name]["collapse"]
    assert points[0]["compile_seconds"] >= 0.0 and all(p["compile_seconds"] == 0.0 for p in points[1:])
    assert all(p["seconds"] >= p["compile_seconds"] for p in points)


def test_seed_table_gives_each_seeds_brackets_and_chance_test():
  """An over-seeds report.md shows the collapse diagnostics seed by seed, so that no per-seed bracket is quoted
  without its table: the steps between which the EMA-updated teacher falls below the student and has lost half its
  top-1 (on the probe), how far it moved, and its final top-1 with the binomial p against chance."""
  def point(step, teacher, student, distance):
    return {"step": step, "epoch": 1, "probe_teacher_top1": teacher, "probe_student_top1": student,
            "distance": distance}
  falling = [point(0, 40.0, 10.0, 0.0), point(100, 30.0, 20.0, 0.1), point(178, 15.0, 25.0, 0.2),
             point(300, 5.0, 6.0, 1.6)]
  steady = [point(0, 40.0, 10.0, 0.0), point(100, 39.0, 20.0, 0.01), point(300, 38.0, 30.0, 0.02)]
  rows = collapse.seed_table([{"seed": 0, "val_top1": 0.81, "collapse": falling},
                              {"seed": 1, "val_top1": 38.0, "collapse": steady},
                              {"seed": 2, "val_top1": 0.62}], "teacher_ema", "student_kd_ema",
                             num_classes=200, val_examples=10_000)
  assert rows[0].startswith("| seed | teacher_ema below student_kd_ema (steps) | half its top-1 lost (steps)")
  assert rows[2] == "| 0 | 100–178 | 100–178 | 160.0% | 0.81 | 3.3e-05 |"
  assert rows[3].startswith("| 1 | never | never | 2.0% | 38.00 | ")
  assert len(rows) == 4   # seed 2 has no diagnostics: no row
  assert collapse.seed_table([{"seed": 0}], "teacher_ema", "student_kd_ema") == []


def test_an_over_seeds_report_shows_the_seed_table():
  from kdjax.report import build
  def point(step, teacher, student, distance):
    return {"step": step, "epoch": 1, "probe_teacher_top1": teacher, "probe_student_top1": student,
            "distance": distance, "entropy": 0.5, "kd_loss": 1.0, "probe_size": 32}
  points = [point(0, 40.0, 10.0, 0.0), point(100, 15.0, 25.0, 0.2)]
  report = {"dataset": {"num_classes": 200, "val_examples": 10_000}, "config": {"kd": {"temperature": 4.0}},
            "models": {"teacher_ema": {"per_seed": [{"seed": s, "val_top1": 0.8, "collapse": points} for s in (0, 1)]}}}
  text = "\n".join(build.ema_sections(report))
  assert "teacher_ema, seed by seed" in text and "| 0 | 0–100 | 0–100 |" in text and "| 1 | 0–100 | 0–100 |" in text


def test_ema_collapse_panels_share_steps_from_0_with_integer_ticks_and_name_the_students_kd_loss(monkeypatch):
  from kdjax.report import collapse
  from kdjax.report import figures
  saved = []
  monkeypatch.setattr(figures, "save", lambda figure, path: saved.append(figure))
  points = [{"step": step, "distance": 0.01 * step, "entropy": 0.5, "kd_loss": None if step == 0 else 3.045e-3,
             "teacher_top1": 60.0, "student_top1": 40.0 + step} for step in (0, 1, 2, 3, 4, 5, 7)]
  collapse.plot({"teacher_ema": points}, "unused.png", "digits · 1 seed")
  figure = _drawn(saved[0])
  assert figure.get_suptitle() == "digits · 1 seed"
  limits = {axis.get_xlim() for axis in figure.axes}
  assert len(limits) == 1 and next(iter(limits))[0] <= 0
  for axis in figure.axes:
    ticks = [tick for tick in axis.get_xticks() if axis.get_xlim()[0] <= tick <= axis.get_xlim()[1]]
    assert all(float(tick).is_integer() for tick in ticks)
  loss_axis = figure.axes[2]
  assert [text.get_text() for text in loss_axis.get_legend().get_texts()] == ["student_kd_ema (against teacher_ema)"]
  _legends_below_their_panels(figure)
