"""Issue 14, one test (or a few) per numbered case: a corrupt checkpoint, a deleted config.json, other data at
the same path, phases out of order, two runs on one workdir, an empty --workdir, a negative seed, and the
tracebacks that became one line. Most run in process on a copy of the shared finished run (tests/ckpt_support)
and stop before any training; the recovery, the lock and Ctrl-C run the real command."""

import json
import math
import os
import signal
import subprocess

import numpy as np
import pytest

from kdjax.store import checkpoints as ckpt_lib
from kdjax.cli import exits as cli
from kdjax.config import validation as config_validation
from kdjax import data as data_lib
from kdjax.study import experiment
from kdjax.cli import inspection as inspect_lib
from kdjax import progress
from kdjax.store import resume
from kdjax.store import meta as run_meta
from kdjax.store import teacher as teacher_lib
from kdjax.errors import ConfigError
from kdjax.store.rundir import RunDir
from kdjax.study.builder import Setup

from tests import ckpt_support as support
from tests.test_resume import _assert_resumed_equals_uninterrupted

# kdjax.main, but waits (to be killed or interrupted) when about to save MODEL's epoch EPOCH (argv 1 and 2).
WAIT_BEFORE_SAVE = """
import sys, time
from kdjax.store import checkpoints
model, epoch = sys.argv.pop(1), int(sys.argv.pop(1))
original = checkpoints.ModelCheckpoints.save
def save(self, saved_epoch, tree, meta):
  if self.directory.name == model and saved_epoch == epoch:
    print("WAITING BEFORE SAVE", flush=True)
    time.sleep(300)
  return original(self, saved_epoch, tree, meta)
checkpoints.ModelCheckpoints.save = save
from absl import app
from kdjax.cli import main
sys.argv[0] = "kdjax.main"
app.run(main.main)
"""


def _one_line(text: str) -> str:
  """The one line of `text`, besides report.md's caution that a tiny run's teacher is at chance (kdjax/report/build.py),
  which is about the tiny run, not the failure under test."""
  lines = [line for line in text.strip().splitlines() if support.CHANCE_CAUTION not in line]
  assert len(lines) == 1, text[-3000:]
  return lines[0]


def _stop(process: subprocess.Popen) -> None:
  if process.poll() is None:
    process.kill()
    process.wait(timeout=30)


# --- 1. a corrupted checkpoint ---------------------------------------------------------------------------------

def test_case1_corrupt_latest_save_recovers_from_the_intact_one_and_says_so(tmp_path, tmp_path_factory):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  message = support.corrupt_an_array(workdir / "checkpoints" / "teacher" / "3")
  assert message.startswith(f"{workdir / 'checkpoints' / 'teacher' / '3'}: corrupt: array ")
  stdout, stderr = support.run_in_process(support.study_config(), workdir)
  warning = _one_line(stderr)
  assert warning.startswith(f"kdjax: warning: {message}") and "teacher/2" in warning
  assert "[teacher] resuming after epoch 2" in stdout
  assert "[student_kd_ema] finished earlier: loaded epoch 3" in stdout
  reference = support.read_report(support.finished_run(tmp_path_factory))
  assert support.without_timing(support.read_report(workdir)) == support.without_timing(reference)


def test_case1_no_intact_save_is_one_line_naming_the_array_and_overwrites_nothing(tmp_path, tmp_path_factory):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  messages = [support.corrupt_an_array(workdir / "checkpoints" / "teacher" / str(epoch)) for epoch in (1, 2, 3)]
  before = support.snapshot(workdir)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as error:
    experiment.train_and_evaluate(support.study_config(), workdir)
  # the latest save's fault, then each earlier one's and the way out (tests/test_checkpoints.py checks the line)
  assert str(error.value).startswith(f"{messages[-1]}; every earlier save in ") and "\n" not in str(error.value)
  assert all(message.split(": ", 1)[1] in str(error.value) for message in messages[:-1])
  assert support.snapshot(workdir) == before          # report.json, report.md, metrics.jsonl as they were
  # inspect --evaluate verifies the same way
  code = inspect_lib.main([str(workdir), "--evaluate", "teacher"])
  assert code == 2


def test_case1_finished_phase_must_reproduce_its_recorded_metrics(tmp_path, tmp_path_factory, monkeypatch):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  config = support.study_config()
  setup = Setup.build(config)
  run = RunDir(workdir)
  saved, changes = resume.read_saved_phases(run, setup, ["teacher"], run_meta.config_json(config))
  assert changes == [] and saved["teacher"].evaluated["teacher"][0]["val_loss"] == \
      support.read_report(workdir)["models"]["teacher"]["val_loss"]      # reproduced bit for bit
  original = Setup.evaluate

  def slightly_off(self, net, params):   # a changed kernel, say: the loss moves in its 7th digit
    metrics, logits = original(self, net, params)
    return dict(metrics, val_loss=metrics["val_loss"] * (1 + 1e-6)), logits

  monkeypatch.setattr(Setup, "evaluate", slightly_off)
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    resume.read_saved_phases(run, setup, ["teacher"], run_meta.config_json(config))
  assert str(error.value).startswith(f"{workdir / 'checkpoints' / 'teacher' / '3'}: teacher re-evaluated gives")
  assert "recorded" in str(error.value)


# --- 2. config.json deleted --------------------------------------------------------------------------------------

def test_case2_deleted_config_json_still_checks_each_checkpoints_config(tmp_path, tmp_path_factory):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  (workdir / "config.json").unlink()
  before = support.snapshot(workdir)
  config = support.study_config(**{"kd.temperature": 2.0, "optimizer.learning_rate": 0.5})
  with pytest.raises(ConfigError) as error:
    experiment.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert message.startswith(f"checkpoint {workdir / 'checkpoints' / 'teacher' / '3'} was saved with another config")
  assert "kd.temperature (4.0 -> 2.0)" in message and "optimizer.learning_rate (0.001 -> 0.5)" in message
  assert support.snapshot(workdir) == before and not (workdir / "config.json").exists()


# --- 3. other data behind the same path ----------------------------------------------------------------------------

def _other_labels(monkeypatch):
  """data.load returns the same images with two training labels swapped: other data, the same config."""
  original = data_lib.load

  def load(data_config):
    dataset = original(data_config)
    labels = dataset.train_labels.copy()
    first = int(np.flatnonzero(labels != labels[0])[0])
    labels[[0, first]] = labels[[first, 0]]
    return data_lib.Dataset(dataset.name, dataset.train_images, labels, dataset.val_images,
                            dataset.val_labels, dataset.class_names)

  monkeypatch.setattr(data_lib, "load", load)


def test_case3_other_data_at_the_same_path_stops_the_resume(tmp_path, tmp_path_factory, monkeypatch):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  before = support.snapshot(workdir)
  _other_labels(monkeypatch)
  with pytest.raises(ConfigError) as error:
    experiment.train_and_evaluate(support.study_config(**{"data.manual_dir": "/elsewhere"}), workdir)
  message = str(error.value)
  assert message.startswith(f"checkpoint {workdir / 'checkpoints' / 'teacher' / '3'} was trained on other data")
  assert "train labels" in message and "\n" not in message
  assert support.snapshot(workdir) == before


def test_case3_teacher_trained_on_other_data_is_refused_unless_allowed(tmp_path_factory, monkeypatch, capsys):
  source = support.finished_run(tmp_path_factory)
  _other_labels(monkeypatch)
  config = support.study_config(phases=("student_kd",), **{"teacher.checkpoint": str(source)})
  setup = Setup.build(config)
  with pytest.raises(ConfigError) as error:
    teacher_lib.read_teacher(str(source), setup, run_meta.config_json(config))
  assert str(error.value).startswith(f"teacher.checkpoint {source / 'checkpoints' / 'teacher' / '3'} was "
                                     f"trained on other data") and "train labels" in str(error.value)
  config.checkpoint.allow_config_change = True
  teacher = teacher_lib.read_teacher(str(source), Setup.build(config), run_meta.config_json(config))
  assert teacher.provenance["data_differences"] == ["data: train labels"]
  assert "kdjax: warning: the teacher from" in capsys.readouterr().err


# --- 4. phases listed out of order ------------------------------------------------------------------------------

def test_case4_phases_run_in_dependency_order(tmp_path, monkeypatch, capsys):
  config = support.study_config(phases=("student_kd", "teacher"))
  assert experiment.phases_to_run(config, None) == ("teacher", "student_kd")
  assert experiment.phases_to_run(support.study_config(phases=("student_kd_ema", "student_ce", "teacher")),
                                  None) == ("teacher", "student_ce", "student_kd_ema")
  started = []

  def run_phase(setup, run, phase, *args):   # records the order, stops before any training
    started.append(phase)
    raise KeyboardInterrupt
  monkeypatch.setattr(experiment, "run_phase", run_phase)
  with pytest.raises(KeyboardInterrupt), progress.printing():   # the run's lines, as the command line shows them
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert started == ["teacher"]
  assert "kdjax: note: phases run in dependency order: teacher, student_kd" in capsys.readouterr().out


# --- 5. two runs on one workdir ------------------------------------------------------------------------------------

def test_case5_second_run_on_a_workdir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, tmp_path_factory):
  cache = support.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  first = support.script(WAIT_BEFORE_SAVE, ["teacher", "1", *support.EMA_STUDY, f"--workdir={workdir}"], cache)
  try:
    support.wait_for_line(first, "WAITING BEFORE SAVE", timeout=120)
    before = support.snapshot(workdir)
    second = support.kdjax(support.EMA_STUDY, workdir, cache, timeout=120)
    assert second.returncode == 2
    assert _one_line(second.stderr) == (f"kdjax: error: workdir {workdir} is in use by another kdjax run "
                                        f"(PID {first.pid}); wait for it to end, or use another workdir")
    assert support.snapshot(workdir) == before
    support.sigkill(first)
  finally:
    _stop(first)
  with RunDir(workdir).locked():   # kill -9 left no stale lock
    assert (workdir / ".lock").read_text().strip() == str(os.getpid())


# --- 6. an empty --workdir -------------------------------------------------------------------------------------

def test_case6_empty_workdir_is_refused(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  for workdir in ("", "  "):
    code = cli.run_main("kdjax", lambda: experiment.train_and_evaluate(support.study_config(), workdir))
    assert code == 2
    assert _one_line(capsys.readouterr().err).startswith("kdjax: error: workdir: empty")
  assert list(tmp_path.iterdir()) == []


# --- 7. a seed the RNGs refuse ---------------------------------------------------------------------------------

def test_case7_seed_out_of_range_is_refused_before_anything_is_created(tmp_path):
  for seed in (-1, 2**31, True):
    with pytest.raises(ConfigError, match=r"^seed must be an integer in \[0, 2\*\*31 - 1\]"):
      config_validation.validate(support.study_config(seed=seed))
  config_validation.validate(support.study_config(seed=2**31 - 1))
  with pytest.raises(ConfigError):
    experiment.train_and_evaluate(support.study_config(seed=-1), tmp_path / "run")
  assert not (tmp_path / "run").exists()


# --- 8. one line instead of a traceback ---------------------------------------------------------------------------

def test_case8_config_json_that_is_not_an_object(tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("[1, 2]")
  with pytest.raises(ConfigError, match=r"config\.json holds a JSON list, not a kdjax config"):
    experiment.train_and_evaluate(support.study_config(), workdir)
  (workdir / "checkpoints").mkdir()
  assert inspect_lib.main([str(workdir)]) == 2
  assert _one_line(capsys.readouterr().err).endswith("config.json: unreadable config (a JSON list, not an object)")


def test_case8_export_out_must_be_a_file_path_ending_as_written(tmp_path, tmp_path_factory, capsys):
  from parity import export
  run = support.finished_run(tmp_path_factory)
  cases = {("weights", "--model", "teacher", "--out", str(tmp_path)): "it is a directory",
           ("data", "--out", str(tmp_path)): "it is a directory",
           ("data", "--out", str(tmp_path / "val")): f"must end in .npz (numpy would write {tmp_path / 'val'}.npz"}
  for argv, expected in cases.items():
    assert export.main([argv[0], "--workdir", str(run), *argv[1:]]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("parity.export: error: ") and expected in line
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # interrupts a study, resumes it and compares it with the uninterrupted one
def test_case8_ctrl_c_is_one_line_exit_130_and_the_resume_is_exact(tmp_path, tmp_path_factory):
  reference = support.finished_run(tmp_path_factory)
  cache = support.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  process = support.script(WAIT_BEFORE_SAVE, ["student_kd_ema", "2", *support.EMA_STUDY, f"--workdir={workdir}"],
                           cache)
  try:
    support.wait_for_line(process, "WAITING BEFORE SAVE", timeout=120)
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[0]
  finally:
    _stop(process)
  assert process.returncode == 130
  assert rest.strip().splitlines() == ["kdjax: interrupted; rerun the same command to resume"]
  resumed = support.kdjax(support.EMA_STUDY, workdir, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_resumed_equals_uninterrupted(workdir, reference, resumed.stdout)


def test_case8_temperature_bounds_and_the_divergence_message_names_it():
  for temperature in (1e-30, 5e-3, 2e3, 1e30):
    with pytest.raises(ConfigError, match=r"^kd\.temperature must be in \[0\.01, 1000\]"):
      config_validation.validate(support.study_config(**{"kd.temperature": temperature}))
  for temperature in (0.01, 1000.0):
    config_validation.validate(support.study_config(**{"kd.temperature": temperature}))
  config = support.study_config()
  loss = experiment.train.DivergenceError("non-finite loss")
  assert str(experiment.diverged(config, "student_kd", 2, loss)) == (
      "phase student_kd, epoch 2: non-finite loss (check optimizer.learning_rate=0.001, kd.temperature=4.0)")
  assert str(experiment.diverged(config, "teacher", 1, loss)) == (
      "phase teacher, epoch 1: non-finite loss (check optimizer.learning_rate=0.001)")


def test_case8_student_checkpoint_given_as_teacher_is_named(tmp_path, tmp_path_factory):
  step = support.finished_run(tmp_path_factory) / "checkpoints" / "student_kd_ema" / "3"
  config = support.study_config(phases=("student_kd",), **{"teacher.checkpoint": str(step)})
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert str(error.value).startswith(f"{step}: a checkpoint of student_kd_ema (phase student_kd_ema, the student "
                                     f"net), not of a teacher")


def test_case8_inspect_shows_the_good_models_and_marks_the_bad_one(tmp_path, tmp_path_factory, capsys):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  message = support.corrupt_an_array(workdir / "checkpoints" / "teacher" / "3")
  assert inspect_lib.main([str(workdir)]) == 1
  captured = capsys.readouterr()
  assert f"== teacher  ({workdir / 'checkpoints' / 'teacher'})\nBAD CHECKPOINT, not shown: {message}" in captured.out
  assert "== student_kd_ema  (" in captured.out and "== teacher_ema  (" in captured.out
  assert "params, in layer order:" in captured.out.split("== student_kd_ema")[1]
  assert _one_line(captured.err) == f"kdjax.cli.inspection: error: {message}"
  assert inspect_lib.main([str(workdir), "--json"]) == 1
  models = json.loads(capsys.readouterr().out)["models"]
  assert models[0] == {"model": "teacher", "path": str(workdir / "checkpoints" / "teacher"), "error": message}


def test_case8_missing_orbax_metadata_one_rule_for_the_run_and_inspect(tmp_path, tmp_path_factory, capsys):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  step = workdir / "checkpoints" / "student_kd_ema" / "3"
  (step / "state" / "_METADATA").unlink()
  expected = f"{step}: incomplete: state/_METADATA (Orbax's description of the saved tree) is missing"
  assert inspect_lib.main([str(workdir)]) == 1                              # inspect refuses the step ...
  assert _one_line(capsys.readouterr().err) == f"kdjax.cli.inspection: error: {expected}"
  config = support.study_config()
  saved, _ = resume.read_saved_phases(RunDir(workdir), Setup.build(config), ["student_kd_ema"],
                                      run_meta.config_json(config))
  assert saved["student_kd_ema"].epoch == 2                               # ... and so does the run, which
  assert _one_line(capsys.readouterr().err) == (                          # resumes from the intact epoch 2
      f"kdjax: warning: {expected}; using the latest intact save, {step.parent / '2'}")


# --- issue 36: a distillation phase that learned nothing is not a result ------------------------------------------

def _epoch(steps=4, moved=True, step_losses=(0.5, 0.4, 0.3, 0.2)):
  from kdjax.training import train
  return train.EpochResult(train_loss=float(np.mean(step_losses)) if step_losses else 0.0, steps=steps,
                           seconds=1.0, step_losses=list(step_losses), params_moved=moved)


def test_issue36_a_kd_epoch_whose_student_did_not_move_stops_with_one_line_exit_1():
  from kdjax.errors import DivergenceError, StalledTrainingError
  from kdjax.study import acceptance
  config = support.study_config(**{"kd.temperature": 1000.0})
  for phase in ("student_kd", "student_kd_ema", "student_kd_ema@0.99"):
    with pytest.raises(StalledTrainingError) as error:
      acceptance.check_epoch(config, phase, 2, _epoch(moved=False), {})
    message = str(error.value)
    assert message.startswith(f"phase {phase}, epoch 2: the student's parameters did not change in 4 training step")
    assert "kd.temperature=1000.0" in message and "optimizer.learning_rate=0.001" in message and "\n" not in message
    assert next(code for kinds, code in cli.EXIT_CODES if isinstance(error.value, kinds)) == 1
    assert isinstance(error.value, DivergenceError)
  with pytest.raises(StalledTrainingError, match=r"the training loss was 0 on every one of its 3 step"):
    acceptance.check_epoch(config, "student_kd", 1, _epoch(steps=3, step_losses=(0.0, 0.0, 0.0)), {})
  # a teacher or label-trained student may reach a loss of exactly 0 (a learned training set): not refused here
  for phase in ("teacher", "student_ce"):
    acceptance.check_epoch(config, phase, 1, _epoch(moved=False, step_losses=(0.0, 0.0, 0.0, 0.0)), {})
  acceptance.check_epoch(config, "student_kd", 1, _epoch(step_losses=(0.0, 0.1, 0.0, 0.0)), {})


def test_issue36_a_study_whose_kd_updates_round_away_stops_naming_the_phase(tmp_path):
  """Adam at learning rate 1e-30: no update changes a weight. The teacher phase passes (a CE phase is not
  checked), student_kd stops at its first epoch with the one line, before anything of it is recorded."""
  from kdjax.errors import StalledTrainingError
  config = support.study_config(phases=("teacher", "student_kd"), epochs=1,
                                **{"optimizer.learning_rate": 1e-30, "ema.student_decay": 0.0})
  with pytest.raises(StalledTrainingError, match=r"^phase student_kd, epoch 1: the student's parameters did not "
                                                 r"change in \d+ training step"):
    experiment.train_and_evaluate(config, tmp_path / "run")
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert {row["phase"] for row in rows} == {"teacher"}


# --- issue 36: a run that ran away, a teacher no better than chance ----------------------------------------------

def _report(teacher_correct=90, teacher_loss=0.3, student_loss=0.5, examples=100, num_classes=10):
  entry = lambda correct, loss: {"val_top1": 100.0 * correct / examples, "val_top5": 100.0, "val_loss": loss,
                                 "val_correct": correct, "params": 1, "train_seconds": 1.0}
  return {"dataset": {"name": "digits", "train_examples": 200, "val_examples": examples,
                      "num_classes": num_classes, "image_shape": [16, 16, 3]},
          "models": {"teacher": entry(teacher_correct, teacher_loss), "student_kd": entry(80, student_loss)},
          "config": {"optimizer": {"learning_rate": 10.0}},
          "environment": {"jax": "0", "flax": "0", "backend": "cpu", "devices": ["cpu:0"]}}


def test_issue36_a_model_whose_loss_ran_away_is_named_first_in_the_report():
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


def test_issue36_a_teacher_no_better_than_chance_is_said_first():
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


def test_issue36_adam_at_learning_rate_10_warns_and_report_md_says_so(tmp_path):
  config = support.study_config(phases=("teacher",), epochs=1,
                                **{"optimizer.learning_rate": 10.0, "ema.student_decay": 0.0})
  _, warnings = support.run_in_process(config, tmp_path / "run")
  report = json.loads((tmp_path / "run" / "report.json").read_text())
  assert report["models"]["teacher"]["val_loss"] > 1e3
  assert "kdjax: warning: teacher ended far from where it started" in warnings
  text = (tmp_path / "run" / "report.md").read_text()
  assert "teacher ended far from where it started" in text and "optimizer.learning_rate=10.0" in text
