"""Checkpoint layer, config mismatch, teacher reuse, and the bad-input and full-disk faults."""

import json
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.store import checkpoints as ckpt_lib
from kdjax.config import defaults as config_lib
from kdjax.errors import ConfigError
from kdjax.cli import inspection as inspect_lib
from kdjax.store.rundir import RunDir
from kdjax.study import resume as study_resume
from kdjax.study.builder import Setup

from tests.support import ckpt as support
from tests.support.runs import _one_line


def _tree(value: float) -> dict:
  return {"params": {"conv1": {"kernel": jnp.full((3, 3, 3, 12), value), "bias": jnp.zeros(12)}},
          "step": jnp.asarray(int(value), jnp.int32)}


def test_save_restore_keep_and_times(tmp_path):
  manager = ckpt_lib.ModelCheckpoints(tmp_path / "model", keep=2)
  started = time.perf_counter()
  for epoch in (1, 2, 3):
    manager.save(epoch, _tree(epoch), {"epoch": epoch})
  save_seconds = (time.perf_counter() - started) / 3
  assert manager.epochs() == [2, 3]                       # keep = 2
  started = time.perf_counter()
  tree, meta, epoch = manager.restore(target=_tree(0))
  restore_seconds = time.perf_counter() - started
  manager.close()
  assert meta == {"epoch": 3} and epoch == 3 and int(tree["step"]) == 3
  np.testing.assert_array_equal(tree["params"]["conv1"]["kernel"], np.full((3, 3, 3, 12), 3.0))
  print(f"tiny tree: save {save_seconds * 1000:.0f} ms, restore {restore_seconds * 1000:.0f} ms")
  # The parity suite's contract: ModelCheckpoints(dir, keep).restore() -> (tree, meta, epoch), tree["params"].
  tree, _, epoch = ckpt_lib.ModelCheckpoints(tmp_path / "model", 3).restore(2)
  assert epoch == 2
  assert float(tree["params"]["conv1"]["kernel"][0, 0, 0, 0]) == 2.0


def test_config_differences_ignore_result_neutral_fields():
  saved = json.loads(config_lib.default_config().to_json_best_effort())
  changed = config_lib.default_config()
  changed.progress = False
  changed.log_every_epoch = False
  changed.checkpoint.keep = 7
  changed.checkpoint.every_epochs = 2
  changed.data.manual_dir = "/elsewhere"
  assert config_lib.differences(saved, json.loads(changed.to_json_best_effort())) == []
  changed.epochs = 4
  changed.kd.temperature = 2.0
  changed.phases = ("teacher",)
  assert config_lib.differences(saved, json.loads(changed.to_json_best_effort())) == [
      "epochs (10 -> 4)", "kd.temperature (4.0 -> 2.0)",
      'phases (["teacher", "student_ce", "student_kd"] -> ["teacher"])']


def test_config_mismatch_stops_with_one_line_and_touches_nothing(tmp_path, tmp_path_factory, kdjax_in_process):
  # A copy: the refused run takes the workdir's lock first, which would refuse another worker's rerun of it.
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  before = support.snapshot(workdir)
  # In process: the refused command's fresh process, tests/store/test_rundir.py (another run's workdir, exit 2).
  result = kdjax_in_process(*support.EMA_STUDY, "--config.epochs=4", "--config.kd.temperature=2",
                            f"--workdir={workdir}", cwd=support.REPO)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kdjax: error: workdir ")
  assert "epochs (3 -> 4)" in lines[0] and "kd.temperature (4.0 -> 2.0)" in lines[0]
  assert "checkpoint.allow_config_change" in lines[0]
  assert support.snapshot(workdir) == before


def test_allow_config_change_resumes_with_the_new_config(tmp_path, tmp_path_factory):
  workdir = tmp_path / "run"
  shutil.copytree(support.finished_run(tmp_path_factory), workdir)
  stdout, stderr = support.run_in_process(
      support.study_config(**{"epochs": 4, "checkpoint.allow_config_change": True}), workdir)
  assert "kdjax: warning: resuming" in stderr and "epochs (3 -> 4)" in stderr
  assert "[teacher] resuming after epoch 3" in stdout
  report = support.read_report(workdir)
  assert report["checkpoints"]["config_changes"] == ["epochs (3 -> 4)"]
  assert [row["epoch"] for row in report["models"]["teacher"]["epochs"]] == [1, 2, 3, 4]
  assert json.loads((workdir / "config.json").read_text())["epochs"] == 4


def test_teacher_checkpoint_is_reused_not_trained(tmp_path, tmp_path_factory):
  source = support.finished_run(tmp_path_factory)
  workdir = tmp_path / "students"
  stdout, _ = support.run_in_process(
      support.kd_config(**{"phases": ("student_kd",), "teacher.checkpoint": str(source)}), workdir)
  assert "[teacher] loaded from" in stdout and "[teacher] epoch" not in stdout
  report, reference = support.read_report(workdir), support.read_report(source)
  teacher = report["models"]["teacher"]
  assert teacher["source"]["checkpoint"] == str(source / "checkpoints" / "teacher" / "3")
  assert teacher["source"]["source_workdir"] == str(source) and teacher["source"]["epoch"] == 3
  for key in ("val_top1", "val_top5", "val_loss", "epochs"):
    assert teacher[key] == reference["models"]["teacher"][key]
  assert "student_kd" in report["models"] and "agreement_with_teacher" in report["models"]["student_kd"]
  assert "loaded from" in (workdir / "report.md").read_text()
  assert ckpt_lib.saved_epochs(workdir / "checkpoints" / "teacher") == [3]   # a copy, for inspect and parity
  assert not any(row["model"] == "teacher" for row in support.read_metrics(workdir))


@pytest.mark.parametrize("form", ["workdir", "model folder", "step folder"])
def test_resolve_accepts_a_workdir_a_checkpoint_folder_or_a_step(tmp_path_factory, form):
  run = support.finished_run(tmp_path_factory)
  path = {"workdir": run, "model folder": run / "checkpoints" / "teacher",
          "step folder": run / "checkpoints" / "teacher" / "2"}[form]
  folder, step = ckpt_lib.resolve(path, "teacher")
  assert folder == run / "checkpoints" / "teacher"
  assert step == (2 if form == "step folder" else None)


def _broken(kind: str, tmp_path: pathlib.Path, run: pathlib.Path) -> pathlib.Path:
  """A teacher checkpoint folder that is missing, not Orbax, or truncated; returns the path to pass."""
  if kind == "missing":
    return tmp_path / "no_such_run"
  if kind == "not orbax":
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a checkpoint")
    return tmp_path / "notes"
  folder = tmp_path / "teacher"
  shutil.copytree(run / "checkpoints" / "teacher", folder)
  if kind == "junk step":
    shutil.rmtree(folder)
    (folder / "3").mkdir(parents=True)
    (folder / "3" / "state").write_text("junk")
  if kind == "truncated":
    for data in (folder / "3" / "state").rglob("d/*"):
      data.write_bytes(data.read_bytes()[:10])
  return folder


@pytest.mark.parametrize("kind", ["missing", "not orbax", "junk step", "truncated"])
def test_bad_teacher_checkpoint_is_one_line_naming_the_path(tmp_path, tmp_path_factory, kind):
  from kdjax.study import experiment
  run = support.finished_run(tmp_path_factory)
  path = _broken(kind, tmp_path, run)
  config = config_lib.default_config()
  config.update_from_flattened_dict({"phases": ("student_kd",), "teacher.checkpoint": str(path),
                                     "data.image_size": 16, "data.max_train_examples": 200,
                                     "data.max_val_examples": 100, "epochs": 3, "progress": False})
  workdir = tmp_path / "students"
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    experiment.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert "\n" not in message and str(path) in message
  assert not (workdir / "config.json").exists() and not (workdir / "checkpoints").exists()


def test_truncated_checkpoint_on_resume_is_one_line_and_touches_nothing(tmp_path, tmp_path_factory):
  # Every save of the phase truncated: no intact one to resume from (one is used, see test_resume.py).
  workdir = tmp_path / "run"
  shutil.copytree(support.finished_run(tmp_path_factory), workdir)
  step = workdir / "checkpoints" / "student_kd_ema" / "3"
  for epoch in (1, 2, 3):
    (step.parent / str(epoch) / "state" / "manifest.ocdbt").unlink()
  before = support.snapshot(workdir)
  result = support.kdjax(support.EMA_STUDY, workdir)
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith(f"kdjax: error: {step}: cannot restore")
  assert support.snapshot(workdir) == before


def test_teacher_of_another_shape_is_refused(tmp_path, tmp_path_factory):
  source = support.finished_run(tmp_path_factory)
  # In process: the command's exit 1 and one line for a CheckpointError: test_truncated_checkpoint_on_resume_...
  config = support.kd_config(**{"phases": ("student_kd",), "teacher.checkpoint": str(source), "data.image_size": 32})
  with pytest.raises(ckpt_lib.CheckpointError) as error:
    support.run_in_process(config, tmp_path / "students")
  message = str(error.value)
  assert "\n" not in message and str(source / "checkpoints" / "teacher" / "3") in message
  assert "does not fit" in message


def test_unwritable_workdir_is_a_config_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  # In process: the command's exit 2 and its one line, config/test_validation.py::test_cli_unwritable_workdir.
  with pytest.raises(ConfigError) as error:
    support.run_in_process(support.kd_config(), blocker / "run")
  assert str(error.value) == f"workdir: cannot write to {blocker / 'run'}: Not a directory"


# After student_ce's epoch-1 save, the wrapper fills the disk (or remounts it read-only): a real ENOSPC/EROFS.
SPOIL_DISK_AFTER_FIRST_SAVE = """
import os, subprocess, sys
from kdjax.store import checkpoints
mount, how = sys.argv.pop(1), sys.argv.pop(1)
original = checkpoints.ModelCheckpoints.save
def save(self, epoch, tree, meta):
  original(self, epoch, tree, meta)
  if epoch == 1 and how == "full":
    with open(os.path.join(mount, "filler"), "wb") as filler:
      try:
        while True:
          filler.write(b"\\0" * 65536)
          filler.flush()
      except OSError:
        pass
  if epoch == 1 and how == "read-only":
    subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
checkpoints.ModelCheckpoints.save = save
from absl import app
from kdjax.cli import main
sys.argv[0] = "kdjax.main"
app.run(main.main)
"""


@pytest.mark.parametrize("how", ["full", pytest.param("read-only", marks=pytest.mark.slow)])
def test_full_or_read_only_disk_is_a_clear_error_and_earlier_checkpoints_survive(tmp_path, tmp_path_factory, how):
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path}"]).returncode != 0:
    pytest.skip("needs unshare -m and mount (a private tmpfs) to make a real full disk")
  mount, kept = tmp_path / "disk", tmp_path / "kept"
  mount.mkdir()
  args = " ".join(shlex.quote(arg) for arg in ["--config", str(support.REPO / "configs/kd.py"),
                                         "--config.phases=('student_ce',)", *support.TINY,
                                         f"--workdir={mount / 'run'}"])
  shell = (f"mount -t tmpfs -o size=4m tmpfs {mount} && "
           f"{sys.executable} -c \"$WRAPPER\" {mount} {how} {args} > {tmp_path}/out 2> {tmp_path}/err; "
           f"echo $? > {tmp_path}/rc; mount -o remount,rw {mount}; rm -f {mount}/filler; "
           f"cp -a {mount}/run {kept}")
  environment = dict(support.env(support.compile_cache(tmp_path_factory)), WRAPPER=SPOIL_DISK_AFTER_FIRST_SAVE)
  subprocess.run(["unshare", "-m", "sh", "-c", shell], env=environment, check=True, timeout=300)
  stderr = (tmp_path / "err").read_text().strip().splitlines()
  assert (tmp_path / "rc").read_text().strip() == "1", stderr
  assert len(stderr) == 1 and stderr[0].startswith("kdjax: error: "), stderr
  assert ("No space left on device" if how == "full" else "Read-only file system") in stderr[0]
  assert str(mount / "run") in stderr[0]
  reader = ckpt_lib.ModelCheckpoints(kept / "checkpoints" / "student_ce", read_only=True)
  assert reader.epochs() == [1]
  tree, meta, _ = reader.restore()
  assert meta["epoch"] == 1 and int(tree["step"]) == 4


# Issue 36 (helper H3): a bad teacher.checkpoint is a usage error (exit 2); every corrupt save named, with the way out.

def test_a_bad_teacher_checkpoint_exits_2_as_a_config_value_does(tmp_path, kdjax_in_process):
  """docs/failures.md: a checkpoint the user names is a value the user gave; a run's own checkpoints are exit 1.
  In process: the command's exit 1 in a fresh process is test_truncated_checkpoint_on_resume_..., its exit 2
  tests/store/test_rundir.py's refused second run."""
  result = kdjax_in_process("--config", str(support.REPO / "configs/kd.py"), "--config.phases=('student_kd',)",
                            f"--config.teacher.checkpoint={tmp_path / 'no_such_run'}", *support.TINY,
                            f"--workdir={tmp_path / 'students'}", cwd=support.REPO)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      f"kdjax: error: {tmp_path / 'no_such_run'}: no such file or directory (given as teacher.checkpoint)"]
  assert not (tmp_path / "students" / "config.json").exists()


def _corrupt_steps(folder: pathlib.Path, epochs) -> dict[int, str]:
  return {epoch: support.corrupt_an_array(folder / str(epoch)) for epoch in epochs}


def test_a_teacher_checkpoint_with_a_corrupt_latest_save_names_an_intact_one(tmp_path, tmp_path_factory):
  from kdjax.errors import TeacherCheckpointError
  from kdjax.study import teacher as teacher_check
  from kdjax.study.builder import Setup
  source = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  folder = source / "checkpoints" / "teacher"
  config = support.study_config(phases=("student_kd",), **{"teacher.checkpoint": str(source)})
  setup = Setup.build(config)
  messages = _corrupt_steps(folder, [3])
  with pytest.raises(TeacherCheckpointError) as error:
    teacher_check.read_teacher(str(source), setup, config_lib.as_json(config))
  assert str(error.value) == (f"{messages[3]}; {folder / '2'} is intact: pass it as teacher.checkpoint to distill "
                              f"from that epoch's teacher, or retrain the teacher (delete {folder} and rerun its "
                              f"run) (given as teacher.checkpoint)")
  messages.update(_corrupt_steps(folder, [2, 1]))
  with pytest.raises(TeacherCheckpointError) as error:   # every save corrupt: each named, and the way out
    teacher_check.read_teacher(str(source), setup, config_lib.as_json(config))
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{messages[3]}; every earlier save in {folder} is unusable too (")
  for epoch in (2, 1):
    assert f"step {epoch}: {messages[epoch].removeprefix(f'{folder / str(epoch)}: ')}" in message
  assert message.endswith(f"no save of this teacher is intact: retrain the teacher (delete {folder} and rerun "
                          f"its run), or pass another teacher.checkpoint (given as teacher.checkpoint)")


def test_every_corrupt_save_of_a_phase_is_named_and_deleting_the_phase_retrains_it(tmp_path, tmp_path_factory):
  """A corrupt byte in every teacher save of a workdir: one line naming each save and the way out (delete the
  phase's folder); following it, the rerun trains the teacher again and the report equals the original's (CPU)."""
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  folder = workdir / "checkpoints" / "teacher"
  messages = _corrupt_steps(folder, [3, 2, 1])
  before = support.snapshot(workdir)
  with pytest.raises(ckpt_lib.CorruptCheckpointError) as error:
    support.run_in_process(support.study_config(), workdir)
  message = str(error.value)
  assert "\n" not in message
  assert message == (f"{messages[3]}; every earlier save in {folder} is unusable too (step 2: "
                     f"{messages[2].removeprefix(f'{folder / str(2)}: ')}; step 1: "
                     f"{messages[1].removeprefix(f'{folder / str(1)}: ')}); no save of phase teacher to resume from "
                     f"is intact; delete {folder} to train phase teacher again (the rerun saves it anew), or use a "
                     f"new workdir")
  assert support.snapshot(workdir) == before
  shutil.rmtree(folder)
  support.run_in_process(support.study_config(), workdir)
  original = support.read_report(support.finished_run(tmp_path_factory))
  rerun = support.read_report(workdir)
  assert support.without_timing(rerun["models"]) == support.without_timing(original["models"])


def test_missing_orbax_metadata_one_rule_for_the_run_and_inspect(tmp_path, tmp_path_factory, capsys):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  step = workdir / "checkpoints" / "student_kd_ema" / "3"
  (step / "state" / "_METADATA").unlink()
  expected = f"{step}: incomplete: state/_METADATA (Orbax's description of the saved tree) is missing"
  assert inspect_lib.main([str(workdir)]) == 1                              # inspect refuses the step ...
  assert _one_line(capsys.readouterr().err) == f"kdjax.cli.inspection: error: {expected}"
  config = support.study_config()
  saved, _ = study_resume.read_saved_phases(RunDir(workdir), Setup.build(config), ["student_kd_ema"],
                                            config_lib.as_json(config))
  assert saved["student_kd_ema"].epoch == 2                               # ... and so does the run, which
  assert _one_line(capsys.readouterr().err) == (                          # resumes from the intact epoch 2
      f"kdjax: warning: {expected}; using the latest intact save, {step.parent / '2'}")
