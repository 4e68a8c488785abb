"""Resume after a crash: a real `python -m kdjax.main` subprocess is SIGKILLed in the middle of a student phase
(and, apart, during an Orbax save); the same command on the same workdir then finishes it, and report.json and
metrics.jsonl equal those of a run that was never interrupted, exactly (timing fields aside)."""

import collections

import pytest

from kdjax.store import checkpoints as ckpt_lib

from tests import ckpt_support as support

# Runs kdjax.main, but waits to be killed when about to save epoch 2 of student_kd_ema: by then that epoch's
# metrics rows are in metrics.jsonl, which the resumed run must not duplicate.
BLOCK_BEFORE_SAVE = """
import sys, time
from kdjax.store import checkpoints
original = checkpoints.ModelCheckpoints.save
def save(self, epoch, tree, meta):
  if self.directory.name == "student_kd_ema" and epoch == 2:
    print("WAITING FOR SIGKILL", flush=True)
    time.sleep(600)
  return original(self, epoch, tree, meta)
checkpoints.ModelCheckpoints.save = save
from absl import app
from kdjax.cli import main
sys.argv[0] = "kdjax.main"
app.run(main.main)
"""

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


def _assert_resumed_equals_uninterrupted(workdir, reference, resumed_output):
  assert "[teacher] finished earlier: loaded epoch 3" in resumed_output
  assert "[student_kd_ema] resuming after epoch 1" in resumed_output
  assert "[teacher] epoch" not in resumed_output          # the finished phase was not retrained
  assert "[student_kd_ema] epoch 1/3" not in resumed_output
  report, expected = support.read_report(workdir), support.read_report(reference)
  assert report["checkpoints"]["loaded"] == {"teacher": 3}
  assert report["checkpoints"]["resumed"] == {"student_kd_ema": 1}
  assert support.without_timing(report) == support.without_timing(expected)  # val_top1s, losses, KL, ...
  for model in expected["models"]:
    assert report["models"][model]["epochs"] == expected["models"][model]["epochs"]
    assert report["models"][model]["val_loss"] == expected["models"][model]["val_loss"]
  rows = support.read_metrics(workdir)
  assert support.without_timing(rows) == support.without_timing(support.read_metrics(reference))
  counts = collections.Counter((row["model"], row["epoch"]) for row in rows)
  assert max(counts.values()) == 1, "an epoch trained twice is logged twice"


@pytest.mark.slow  # kills a study, resumes it and compares it with the uninterrupted one
def test_sigkill_in_a_student_phase_then_resume_equals_uninterrupted(tmp_path, tmp_path_factory):
  reference = support.finished_run(tmp_path_factory)
  cache = support.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  process = support.script(BLOCK_BEFORE_SAVE, [*support.EMA_STUDY, f"--workdir={workdir}"], cache)
  output = "".join(support.wait_for_line(process, "WAITING FOR SIGKILL"))
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
  reference = support.finished_run(tmp_path_factory)
  stdout, _ = support.run_in_process(support.study_config(), reference)
  assert "[teacher] finished earlier" in stdout
  assert "[student_kd_ema] finished earlier" in stdout
  assert " epoch 1/3" not in stdout
  report = support.read_report(reference)
  assert report["checkpoints"]["loaded"] == {"teacher": 3, "student_kd_ema": 3}
  assert len(support.read_metrics(reference)) == 4 * 3   # 4 models x 3 epochs, no duplicates
