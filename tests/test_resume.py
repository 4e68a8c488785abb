"""Resume after a crash: a real `python -m kdjax.main` subprocess is SIGKILLed in the middle of a student phase
(and, apart, during an Orbax save); the same command on the same workdir then finishes it, and report.json and
metrics.jsonl equal those of a run that was never interrupted, exactly (timing fields aside)."""

import collections

import pytest

from kdjax.store import checkpoints as ckpt_lib

from tests import ckpt_support as support

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
  reference = support.finished_run(tmp_path_factory)
  stdout, _ = support.run_in_process(support.study_config(), reference)
  assert "[teacher] finished earlier" in stdout
  assert "[student_kd_ema] finished earlier" in stdout
  assert " epoch 1/3" not in stdout
  report = support.read_report(reference)
  assert report["checkpoints"]["loaded"] == {"teacher": 3, "student_kd_ema": 3}
  assert len(support.read_metrics(reference)) == 4 * 3   # 4 models x 3 epochs, no duplicates


# Issue 36 (helper H3): a resume whose saves another conv path computed says so ----------------------------------

def test_a_phase_meta_records_its_conv_paths_and_a_resume_compares_them():
  """The meta's "conv" against this run's path: a differing one is noted for report.json's conv entry (and its
  "why", which report.md prints); a save without it (an older kdjax) is "unknown"; the same path is not noted."""
  from kdjax.config import nets as config_nets
  from kdjax.store import meta as run_meta
  from kdjax.store import resume
  config = support.study_config()
  now = {net: config_nets.conv_path(config, net) for net in ("teacher", "student")}
  other = {net: "xla" if now[net]["path"] == "onednn" else "onednn" for net in now}
  assert run_meta.phase_nets("teacher") == ["teacher"] and run_meta.phase_nets("student_ce") == ["student"]
  assert run_meta.phase_nets("student_kd_ema") == ["student", "teacher"]
  assert run_meta.conv_paths(config, "student_kd") == {"student": now["student"], "teacher": now["teacher"]}
  assert resume.conv_path_changes(config, "teacher", {"epoch": 3, "conv": {"teacher": now["teacher"]}}) == ([], [])
  assert config_nets.describe(config) == now   # nothing noted: the report's entry as before
  meta = {"epoch": 3, "conv": {"teacher": {"path": other["teacher"], "why": "the saving run's reason"}}}
  assert resume.conv_path_changes(config, "teacher", meta) == (["teacher"], [])
  assert resume.conv_path_changes(config, "student_ce", {"epoch": 2}) == ([], ["student"])
  described = config_nets.describe(config)
  assert described["teacher"]["saved"] == [{"phase": "teacher", "epoch": 3, "path": other["teacher"],
                                            "why": "the saving run's reason"}]
  assert described["teacher"]["why"] == (f"{now['teacher']['why']}; resumed from saves computed otherwise: phase "
                                         f"teacher (epoch 3) {other['teacher']}")
  assert described["student"]["saved"] == [{"phase": "student_ce", "epoch": 2, "path": "unknown", "why": None}]
  assert config_nets.describe(support.study_config()) == now   # another run's config: its own record


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
