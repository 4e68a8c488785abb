"""Resume after a crash: a real `python -m kdjax.main` subprocess is SIGKILLed in the middle of a student phase
(and, apart, during an Orbax save); the same command on the same workdir then finishes it, and report.json and
metrics.jsonl equal those of a run that was never interrupted, exactly (timing fields aside)."""

import math

import pytest

from kdjax import phases
from kdjax.store import checkpoints as ckpt_lib
from kdjax.cli import inspection as inspect_lib
from kdjax.config import defaults as config_lib
from kdjax.errors import CheckpointError
from kdjax.errors import ConfigError
from kdjax.store import meta as run_meta
from kdjax.store.rundir import RunDir
from kdjax.study import acceptance
from kdjax.study import experiment
from kdjax.study import resume as study_resume
from kdjax.study.builder import Setup

from tests.support import ckpt as support
from tests.support.runs import _assert_resumed_equals_uninterrupted
from tests.support.runs import _teacher_only
from tests.support.runs import _nan_validation_loss
from tests.support.runs import _one_line
from tests.support.runs import _other_labels

# Runs kdjax.main, but waits to be killed when about to save epoch 2 of student_kd_ema: by then that epoch's
# metrics rows are in metrics.jsonl, which the resumed run must not duplicate.
BLOCK_BEFORE_SAVE = support.hold_before_save('self.directory.name == "student_kd_ema" and epoch == 2')

# Runs kdjax.main and SIGKILLs itself inside Orbax's commit of student_kd_ema/2: the step's files are written
# into Orbax's tmp folder, but the rename that commits them never happens.
KILL_DURING_SAVE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
  final = self.get_final()
  if final.parent.name == "student_kd_ema" and final.name == "2":
    print("KILLED DURING SAVE", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
  return await original(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
from absl import app
from kdjax.cli import main
sys.argv[0] = "kdjax.main"
app.run(main.main)
"""


@pytest.mark.slow  # kills a study, resumes it and compares it with the uninterrupted one
def test_sigkill_in_a_student_phase_then_resume_equals_uninterrupted(tmp_path, tmp_path_factory):
  reference = support.finished_run(tmp_path_factory)
  cache = support.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  process = support.script(BLOCK_BEFORE_SAVE, [*support.EMA_STUDY, f"--workdir={workdir}"], cache)
  output = "".join(support.wait_for_line(process, support.WAITING))
  support.sigkill(process)
  assert "[student_kd_ema] epoch 2/3" in output
  assert ckpt_lib.saved_epochs(workdir / "checkpoints" / "student_kd_ema") == [1]
  assert {(row["model"], row["epoch"]) for row in support.read_metrics(workdir)} >= {("student_kd_ema", 2)}

  resumed = support.kdjax(support.EMA_STUDY, workdir, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_resumed_equals_uninterrupted(workdir, reference, resumed.stdout)


@pytest.mark.slow  # kills a study mid-save, resumes it and compares it with the uninterrupted one
def test_kill_during_a_save_keeps_the_previous_checkpoint_and_resumes(tmp_path, tmp_path_factory):
  reference = support.finished_run(tmp_path_factory)
  cache = support.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  process = support.script(KILL_DURING_SAVE, [*support.EMA_STUDY, f"--workdir={workdir}"], cache)
  process.wait(timeout=300)
  output = process.stdout.read()
  assert process.returncode == -9 and "KILLED DURING SAVE" in output, output[-3000:]
  folder = workdir / "checkpoints" / "student_kd_ema"
  assert [p.name for p in folder.iterdir() if ".orbax-checkpoint-tmp" in p.name], "no half-written save"
  reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
  assert reader.epochs() == [1]
  tree, meta, _ = reader.restore()
  assert meta["epoch"] == 1 and int(tree["step"]) == meta["step"] == 4
  assert set(tree) == {"params", "opt_state", "step", "teacher_params", "ema_params"}

  resumed = support.kdjax(support.EMA_STUDY, workdir, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_resumed_equals_uninterrupted(workdir, reference, resumed.stdout)
  assert not [p.name for p in folder.iterdir() if ".orbax-checkpoint-tmp" in p.name]


def test_rerunning_a_finished_run_loads_every_phase(tmp_path, tmp_path_factory):
  # A copy: the rerun holds its workdir's lock and rewrites its report, which other workers' tests read meanwhile.
  reference = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  stdout, _ = support.run_in_process(support.study_config(), reference)
  assert "[teacher] finished earlier" in stdout
  assert "[student_kd_ema] finished earlier" in stdout
  assert " epoch 1/3" not in stdout
  report = support.read_report(reference)
  assert report["checkpoints"]["loaded"] == {"teacher": 3, "student_kd_ema": 3}
  assert len(support.read_metrics(reference)) == 4 * 3   # 4 models x 3 epochs, no duplicates


# Issue 36 (helper H3): a resume whose saves another conv path computed says so ----------------------------------

def test_a_phase_meta_records_its_conv_paths_and_a_resume_compares_them():
  """The meta's "conv" against this run's path: a differing one is noted in the save's conv_saved, which the study
  hands to report.json's conv entry (and its "why", which report.md prints); a save without it (an older kdjax) is
  "unknown"; the same path is not noted. Nothing is kept behind the config's back: describe(config) alone is this
  process's paths, whatever was resumed before."""
  from kdjax.config import nets as config_nets
  config = support.study_config()
  now = config_nets.conv_paths(config)
  assert now == {net: config_nets.conv_path(config, net) for net in ("teacher", "student")}
  other = {net: "xla" if now[net]["path"] == "onednn" else "onednn" for net in now}
  assert run_meta.phase_nets("teacher") == ["teacher"] and run_meta.phase_nets("student_ce") == ["student"]
  assert run_meta.phase_nets("student_kd_ema") == ["student", "teacher"]
  assert run_meta.phase_nets("student_mean_teacher") == ["student"]   # its teacher is the student's own net
  facts = run_meta.RunFacts(config_json={}, epochs_total=3, seed=0, steps_per_epoch=2, data={},
                            layer_names={"teacher": ("conv1",), "student": ("conv1",)}, conv=now)
  student_kd = phases.models_of("student_kd", 0.0)[0]
  assert run_meta.phase_meta(facts, "student_kd", student_kd, 3, 6, [])["conv"] == {
      "student": now["student"], "teacher": now["teacher"]}
  assert study_resume.conv_path_changes(now, "teacher", {"epoch": 3, "conv": {"teacher": now["teacher"]}}) == {}
  meta = {"epoch": 3, "conv": {"teacher": {"path": other["teacher"], "why": "the saving run's reason"}}}
  teacher_saved = study_resume.conv_path_changes(now, "teacher", meta)
  assert teacher_saved == {"teacher": {"phase": "teacher", "epoch": 3, "path": other["teacher"],
                                       "why": "the saving run's reason"}}
  student_saved = study_resume.conv_path_changes(now, "student_ce", {"epoch": 2})
  assert student_saved == {"student": {"phase": "student_ce", "epoch": 2, "path": "unknown", "why": None}}
  described = config_nets.describe(config, {"teacher": [teacher_saved["teacher"]],
                                            "student": [student_saved["student"]]})
  assert described["teacher"]["saved"] == [teacher_saved["teacher"]]
  assert described["teacher"]["why"] == (f"{now['teacher']['why']}; resumed from saves computed otherwise: phase "
                                         f"teacher (epoch 3) {other['teacher']}")
  assert described["student"]["saved"] == [student_saved["student"]]
  assert config_nets.describe(config) == now   # the same config object: no record kept of what it resumed


def _claim_conv_paths(folder, paths: dict) -> None:
  """Re-saves the latest step of `folder` with its meta's "conv" set to `paths` (hashes rewritten): a save as a
  run on another conv path would have written it."""
  reader = ckpt_lib.ModelCheckpoints(folder, keep=5)
  tree, meta, epoch = reader.restore()
  reader.manager.delete(epoch)
  reader.save(epoch, tree, dict(meta, conv={net: {"path": path, "why": "claimed by the test"}
                                           for net, path in paths.items() if net in meta["conv"]}))
  reader.close()


def test_a_resume_on_another_conv_path_says_so_in_a_line_and_in_the_report(tmp_path, tmp_path_factory):
  from kdjax.config import nets as config_nets
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  config = support.study_config()
  now = {net: config_nets.conv_path(config, net) for net in ("teacher", "student")}
  saved_meta = ckpt_lib.ModelCheckpoints(workdir / "checkpoints" / "teacher", read_only=True).restore()[1]
  assert saved_meta["conv"] == {"teacher": now["teacher"]}   # recorded at save
  other = {net: "xla" if now[net]["path"] == "onednn" else "onednn" for net in now}
  for phase in ("teacher", "student_kd_ema"):
    _claim_conv_paths(workdir / "checkpoints" / phase, other)
  out, _ = support.run_in_process(config, workdir)
  assert (f"kdjax: note: [teacher] its save {workdir / 'checkpoints' / 'teacher' / '3'} was computed with teacher "
          f"convs {other['teacher']}; this run computes teacher convs {now['teacher']['path']} "
          f"({now['teacher']['why']}): float32 sums differ in their last bits (report.json: environment.conv)") in out
  assert "kdjax: note: [student_kd_ema] its save" in out
  conv = support.read_report(workdir)["environment"]["conv"]
  assert conv["teacher"]["path"] == now["teacher"]["path"]
  assert conv["teacher"]["saved"] == [
      {"phase": "teacher", "epoch": 3, "path": other["teacher"], "why": "claimed by the test"},
      {"phase": "student_kd_ema", "epoch": 3, "path": other["teacher"], "why": "claimed by the test"}]
  assert conv["student"]["saved"] == [
      {"phase": "student_kd_ema", "epoch": 3, "path": other["student"], "why": "claimed by the test"}]
  report_md = (workdir / "report.md").read_text()
  assert (f"teacher convs: {now['teacher']['path']} ({now['teacher']['why']}; resumed from saves computed "
          f"otherwise: phase teacher (epoch 3) {other['teacher']}, phase student_kd_ema (epoch 3) "
          f"{other['teacher']})") in report_md


@pytest.mark.slow   # a fresh process: the in-process twin above makes the same check with claimed paths
def test_a_resume_with_onednn_switched_off_notes_the_change(tmp_path, tmp_path_factory, monkeypatch):
  """The issue's case for real: saves trained by oneDNN, resumed where it does not run (KDJAX_ONEDNN=0, as on 2
  devices): exit 0, a note line, report.json's conv entry lists the saves' path; the finished phases' metrics come
  back within the tolerance for another summation order (docs/checkpoints.md), not bit for bit."""
  import numpy as np
  from kdjax.nets import onednn_conv
  reason = onednn_conv.runs_here(np.float32)
  if reason:
    pytest.skip(f"needs oneDNN to train the saves: {reason}")
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  assert ckpt_lib.ModelCheckpoints(workdir / "checkpoints" / "teacher", read_only=True).restore()[1]["conv"][
      "teacher"]["path"] == "onednn"
  monkeypatch.setenv("KDJAX_ONEDNN", "0")
  result = support.kdjax(support.EMA_STUDY, workdir, cache_dir=support.compile_cache(tmp_path_factory))
  assert result.returncode == 0, result.stderr[-3000:]
  assert (f"kdjax: note: [teacher] its save {workdir / 'checkpoints' / 'teacher' / '3'} was computed with teacher "
          f"convs onednn; this run computes teacher convs xla") in result.stdout
  conv = support.read_report(workdir)["environment"]["conv"]
  assert conv["teacher"]["path"].startswith("xla") and conv["teacher"]["saved"][0]["path"] == "onednn"
  assert "resumed from saves computed otherwise: phase teacher (epoch 3) onednn" in (workdir / "report.md").read_text()


def test_a_workdir_with_a_non_finite_recorded_metric_is_explained_on_rerun(tmp_path, monkeypatch):
  """A save written before the acceptance check existed: NaN != NaN, so "re-evaluated gives ... (the checkpoint,
  the data or the code changed)" would be wrong; the rerun names the recorded non-finite metric instead."""
  with monkeypatch.context() as patch:
    patch.setattr(acceptance, "check_epoch", lambda *args: None)   # as kdjax before issue 24
    _nan_validation_loss(patch)
    report = experiment.train_and_evaluate(_teacher_only(), tmp_path)
    assert math.isnan(report["models"]["teacher"]["val_loss"])
  with pytest.raises(CheckpointError) as error:
    experiment.train_and_evaluate(_teacher_only(), tmp_path)
  message = str(error.value)
  assert "teacher recorded a non-finite val_loss (nan) at epoch 1" in message and "changed" not in message
  assert "diverged" in message and "\n" not in message


def test_a_corrupt_teacher_ema_save_is_named_and_rewritten_from_the_phases_own_save(tmp_path, tmp_path_factory,
                                                                                    caplog):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  first = support.read_report(workdir)
  step = workdir / "checkpoints" / "teacher_ema" / "3"
  message = support.corrupt_an_array(step)
  with caplog.at_level("WARNING", logger="kdjax"):
    again = experiment.train_and_evaluate(support.study_config(), workdir)
  warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"
              and support.CHANCE_CAUTION not in record.getMessage()]   # the tiny teacher's, not the save's
  assert len(warnings) == 1 and warnings[0].startswith(message) and f"rewriting {step}" in warnings[0]
  assert again["models"]["teacher_ema"]["val_loss"] == first["models"]["teacher_ema"]["val_loss"]
  tree, meta, _ = ckpt_lib.ModelCheckpoints(step.parent, read_only=True).restore(3)   # intact again
  assert meta["model"] == "teacher_ema" and meta["finished"]


_TWO_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_platforms", "cpu")
from tests.support.runs import _teacher_only
from kdjax.study import experiment
experiment.train_and_evaluate(_teacher_only(**{"mesh.num_devices": 2}), sys.argv[1])
"""


@pytest.mark.slow  # resumes on 4 forced host devices in subprocesses
def test_a_resume_on_another_number_of_devices_says_so_and_the_report_lists_each_part(tmp_path, caplog):
  import subprocess
  import sys
  from tests.support import ckpt as support
  first = subprocess.run([sys.executable, "-c", _TWO_DEVICES, str(tmp_path)], cwd=support.REPO,
                         env=support.env(), capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  config = _teacher_only(**{"epochs": 2, "mesh.num_devices": 1, "checkpoint.allow_config_change": True})
  with caplog.at_level("INFO", logger="kdjax"):
    report = experiment.train_and_evaluate(config, tmp_path)
  lines = [record.getMessage() for record in caplog.records]
  assert any(line.startswith("kdjax: note: [teacher] epochs 1-1 ran on 2 device(s), the rest run on 1")
             for line in lines)
  assert report["checkpoints"]["device_parts"] == {
      "teacher": [{"epochs": [1, 1], "devices": 2}, {"epochs": [2, 2], "devices": 1}]}
  assert report["checkpoints"]["config_changes"] == ["epochs (1 -> 2)"]   # allow_config_change leaves a trace


def test_a_corrupt_latest_save_recovers_from_the_intact_one_and_says_so(tmp_path, tmp_path_factory):
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


def test_no_intact_save_is_one_line_naming_the_array_and_overwrites_nothing(tmp_path, tmp_path_factory):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  messages = [support.corrupt_an_array(workdir / "checkpoints" / "teacher" / str(epoch)) for epoch in (1, 2, 3)]
  before = support.snapshot(workdir)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as error:
    experiment.train_and_evaluate(support.study_config(), workdir)
  # the latest save's fault, then each earlier one's and the way out (tests/store/test_checkpoints.py checks the line)
  assert str(error.value).startswith(f"{messages[-1]}; every earlier save in ") and "\n" not in str(error.value)
  assert all(message.split(": ", 1)[1] in str(error.value) for message in messages[:-1])
  assert support.snapshot(workdir) == before          # report.json, report.md, metrics.jsonl as they were
  # inspect --evaluate verifies the same way
  code = inspect_lib.main([str(workdir), "--evaluate", "teacher"])
  assert code == 2


def test_a_finished_phase_must_reproduce_its_recorded_metrics(tmp_path, tmp_path_factory, monkeypatch):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  config = support.study_config()
  setup = Setup.build(config)
  run = RunDir(workdir)
  saved, changes = study_resume.read_saved_phases(run, setup, ["teacher"], config_lib.as_json(config))
  assert changes == [] and saved["teacher"].evaluated["teacher"][0]["val_loss"] == \
      support.read_report(workdir)["models"]["teacher"]["val_loss"]      # reproduced bit for bit
  original = Setup.evaluate

  def slightly_off(self, net, params):   # a changed kernel, say: the loss moves in its 7th digit
    metrics, logits = original(self, net, params)
    return dict(metrics, val_loss=metrics["val_loss"] * (1 + 1e-6)), logits

  monkeypatch.setattr(Setup, "evaluate", slightly_off)
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    study_resume.read_saved_phases(run, setup, ["teacher"], config_lib.as_json(config))
  assert str(error.value).startswith(f"{workdir / 'checkpoints' / 'teacher' / '3'}: teacher re-evaluated gives")
  assert "recorded" in str(error.value)


def test_a_deleted_config_json_still_checks_each_checkpoints_config(tmp_path, tmp_path_factory):
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


def test_other_data_at_the_same_path_stops_the_resume(tmp_path, tmp_path_factory, monkeypatch):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  before = support.snapshot(workdir)
  _other_labels(monkeypatch)
  with pytest.raises(ConfigError) as error:
    experiment.train_and_evaluate(support.study_config(**{"data.manual_dir": "/elsewhere"}), workdir)
  message = str(error.value)
  assert message.startswith(f"checkpoint {workdir / 'checkpoints' / 'teacher' / '3'} was trained on other data")
  assert "train labels" in message and "\n" not in message
  assert support.snapshot(workdir) == before


def test_a_config_json_that_is_not_an_object_is_one_line(tmp_path, capsys):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_text("[1, 2]")
  with pytest.raises(ConfigError, match=r"config\.json holds a JSON list, not a kdjax config"):
    experiment.train_and_evaluate(support.study_config(), workdir)
  (workdir / "checkpoints").mkdir()
  assert inspect_lib.main([str(workdir)]) == 2
  assert _one_line(capsys.readouterr().err).endswith("config.json: unreadable config (a JSON list, not an object)")
