"""The workdir (kdjax/store/rundir.py): its lock (one run per workdir), an empty --workdir, metrics.jsonl's rows."""

import json
import os

import pytest

from kdjax.cli import exits as cli
from kdjax.store.rundir import BusyError
from kdjax.store import rundir
from kdjax.store.rundir import RunDir
from kdjax.study import experiment

from tests.support import ckpt as support
from tests.support.runs import WAIT_BEFORE_SAVE
from tests.support.runs import _one_line
from tests.support.runs import _stop


def test_train_top1_is_logged(tmp_path_factory):
  workdir = support.finished_run(tmp_path_factory)   # teacher, student_kd_ema and its EMA-weights and teacher_ema rows
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  for row in rows:
    if row["model"] == row["phase"]:
      assert 0 <= row["train_top1"] <= 100
    else:
      assert row["train_top1"] is None


def test_a_second_run_on_a_workdir_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path, tmp_path_factory):
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


def test_an_empty_workdir_is_refused(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  for workdir in ("", "  "):
    code = cli.run_main("kdjax", lambda: experiment.train_and_evaluate(support.study_config(), workdir))
    assert code == 2
    assert _one_line(capsys.readouterr().err).startswith("kdjax: error: workdir: empty")
  assert list(tmp_path.iterdir()) == []


def test_a_run_refused_the_lock_leaves_the_holders_lock_file(tmp_path):
  # The refused run used to remove .lock (the holder's workdir held nothing else yet), so the next attempt locked
  # a new file beside the holder's: two grid tasks then ran the same unit at once.
  run = RunDir(tmp_path / "w")
  with run.locked():
    inode = os.stat(run.path / ".lock").st_ino
    for _ in range(2):
      with pytest.raises(BusyError):
        with RunDir(tmp_path / "w").locked():
          pass
      assert os.stat(run.path / ".lock").st_ino == inode
  assert not (run.path / ".lock").exists()   # the holder's clean-up: the workdir as it found it


def test_a_lock_on_a_file_removed_meanwhile_is_taken_again_on_the_file_there_now(tmp_path, monkeypatch):
  run = RunDir(tmp_path / "w")
  real_flock, calls = rundir.fcntl.flock, []
  def flock_after_the_holder_left(descriptor, operation):
    if not calls:   # the first file we opened is removed (a holder's clean-up) just before we lock it
      (run.path / ".lock").unlink()
    calls.append(descriptor)
    return real_flock(descriptor, operation)
  monkeypatch.setattr(rundir.fcntl, "flock", flock_after_the_holder_left)
  with run.locked():
    assert len(calls) == 2
    assert os.fstat(calls[-1]).st_ino == os.stat(run.path / ".lock").st_ino
