"""kdjax/cli/exits.py: the exit code of each error kind, Ctrl-C (130) and SIGTERM (143) as one line saying how to
resume, Orbax's thread noise kept off stderr, output a terminal cannot encode."""

import os
import signal
import subprocess
import sys

import pytest

from kdjax.cli import exits

from tests.support import ckpt as support
from tests.support import ROOT
from tests.support.cli import TINY_ARGS
from tests.support.runs import _assert_resumed_equals_uninterrupted
from tests.support.runs import WAIT_BEFORE_SAVE
from tests.support.runs import _stop


# kdjax.main on a tiny teacher-only run that waits before saving epoch 2 (to be stopped there).
_WAIT_BEFORE_SECOND_SAVE = support.hold_before_save("epoch == 2", seconds=300)


_TINY_TEACHER = ["--config", "kdjax/config/shipped/default.py", "--config.phases=('teacher',)", "--config.epochs=2",
                 "--config.data.image_size=16", "--config.data.max_train_examples=64",
                 "--config.data.max_val_examples=32", "--config.progress=False"]


def test_sigterm_is_one_line_saying_how_to_resume_exit_143(tmp_path, kdjax_in_process):
  import signal
  from tests.support import ckpt as support
  workdir = tmp_path / "run"
  process = support.script(_WAIT_BEFORE_SECOND_SAVE, [*_TINY_TEACHER, f"--workdir={workdir}"])
  try:
    support.wait_for_line(process, "WAITING BEFORE SAVE", timeout=240)
    process.send_signal(signal.SIGTERM)
    rest = process.communicate(timeout=60)[0]
  finally:
    if process.poll() is None:
      process.kill()
      process.wait(timeout=30)
  assert process.returncode == 143
  assert rest.strip().splitlines() == ["kdjax: terminated (SIGTERM); rerun the same command to resume"]
  # The same command resumes: in process (the stopped run is the fresh process here).
  resumed = kdjax_in_process(*_TINY_TEACHER, f"--workdir={workdir}", cwd=support.REPO)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "[teacher] resuming after epoch 1" in resumed.stdout


def _kept_by_the_entry_points(monkeypatch, logger_name: str, records) -> list[str]:
  """The messages of `records` ((pathname, lineno, message, exc_info) logged at ERROR on `logger_name`) that are
  still emitted once exits.quiet_stderr() has run, as it does in every command-line entry point."""
  import logging
  import sys
  monkeypatch.setattr(sys, "stderr", sys.stderr)   # quiet_stderr wraps it; restored after the test
  logger = logging.getLogger(logger_name)
  monkeypatch.setattr(logger, "filters", list(logger.filters))
  exits.quiet_stderr()
  kept = []

  class Keep(logging.Handler):
    def emit(self, record):
      kept.append(record.getMessage())

  handler = Keep()
  logger.addHandler(handler)
  try:
    for pathname, lineno, message, exc_info in records:
      logger.handle(logger.makeRecord(logger_name, logging.ERROR, pathname, lineno, message, (), exc_info))
  finally:
    logger.removeHandler(handler)
  return kept


def test_orbax_thread_errors_of_a_failed_save_are_dropped_from_stderr(monkeypatch):
  """Each Orbax worker thread logs "_SignalingThread.run() raised an exception" with a ~55-line traceback when a
  save fails (a full disk: ~115 lines before the one-line error); the entry points drop those records."""
  orbax_file = "/venv/site-packages/orbax/checkpoint/_src/futures/future.py"
  records = [(orbax_file, 387, message, None) for message in (
      "[thread=array_type_handler] _SignalingThread.run() raised an exception: RESOURCE_EXHAUSTED",
      "an unrelated error")]
  assert _kept_by_the_entry_points(monkeypatch, "absl", records) == ["an unrelated error"]


def test_unretrieved_orbax_restore_task_errors_are_dropped_from_stderr(monkeypatch):
  """A checkpoint that cannot be read fails every array's restore task; the first failure becomes the one-line
  CheckpointError and asyncio logs the others ("Task exception was never retrieved", with tracebacks) when they are
  collected. The entry points drop those for Orbax's tasks, and keep them for anyone else's."""
  import sys

  def failure_from(path):
    namespace = {}
    exec(compile("def read():\n  raise ValueError('NOT_FOUND: Metadata does not exist')\n", path, "exec"), namespace)
    try:
      namespace["read"]()
    except ValueError:
      return sys.exc_info()

  records = [("base_events.py", 1771, f"Task exception was never retrieved\nfuture: <Task finished name='{task}'>",
              failure_from(path))
             for path, task in (("/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py", "orbax's"),
                                ("/home/user/mine.py", "mine"))]
  kept = _kept_by_the_entry_points(monkeypatch, "asyncio", records)
  assert [message.splitlines()[-1] for message in kept] == ["future: <Task finished name='mine'>"]


def test_a_coroutine_a_failed_restore_leaves_unawaited_prints_nothing(monkeypatch):
  """After a failed read Orbax leaves TensorStore coroutines unawaited; whenever the collector finds one, Python
  printed "RuntimeWarning: coroutine 'Store._get_array_metadatas' was never awaited" (and a tracemalloc hint)
  after the one-line error. The entry points ignore that warning; any other warning is still shown."""
  import gc
  import warnings

  async def _get_array_metadatas():
    pass

  monkeypatch.setattr(sys, "stderr", sys.stderr)   # quiet_stderr wraps it; restored after the test
  with warnings.catch_warnings(record=True) as shown:
    warnings.simplefilter("always")
    exits.quiet_stderr()
    _get_array_metadatas()   # created, never awaited
    gc.collect()
    warnings.warn("a warning of the user's own", RuntimeWarning)
  assert [str(warning.message) for warning in shown] == ["a warning of the user's own"]


def test_output_survives_a_terminal_that_cannot_encode_it(tmp_path):
  """PYTHONIOENCODING=ascii (or a latin-1 terminal): the report's Δ is printed as \\u0394, with no logging-error
  tracebacks, exit 0; the files keep it as UTF-8. A tiny run, so that every line a run prints goes through."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONIOENCODING="ascii")
  result = subprocess.run([sys.executable, "-m", "kdjax.main", "--config", "kd.py", "--workdir", "runs/Δ",
                           *TINY_ARGS, "--config.progress=False", "--config.phases=('teacher','student_kd')"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=600)
  stdout, stderr = result.stdout.decode("ascii"), result.stderr.decode("ascii")   # nothing but ASCII came out
  assert result.returncode == 0, stderr[-3000:]
  assert "Logging error" not in stderr and "Traceback" not in stderr and "UnicodeEncodeError" not in stderr
  assert "\\u0394" in stdout   # the report's "Δ vs teacher" column, escaped
  report = (tmp_path / "runs" / "Δ" / "report.md").read_bytes().decode("utf-8")
  assert "Δ" in report and "\\u0394" not in report


RAISE_IN_RUN_MAIN = """
import sys
from kdjax import errors
from kdjax.cli import exits
kind = sys.argv[1]
def body():
  if kind == "OSError":
    raise OSError(28, "No space left on device", "/tmp/full/report.md")
  raise getattr(errors, kind)("the one line")
sys.exit(exits.run_main("kdjax", body))
"""


@pytest.mark.parametrize("kind,code", [
    ("ConfigError", 2), ("DataError", 2), ("TeacherCheckpointError", 2),
    ("DivergenceError", 1), ("CheckpointError", 1), ("CorruptCheckpointError", 1), ("WriteError", 1), ("OSError", 1),
])
def test_exit_codes_of_each_error_kind(kind, code):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", RAISE_IN_RUN_MAIN, kind], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == code, result.stderr
  expected = "/tmp/full/report.md: No space left on device" if kind == "OSError" else "the one line"
  assert result.stderr.splitlines() == [f"kdjax: error: {expected}"]


@pytest.mark.slow  # interrupts a study, resumes it and compares it with the uninterrupted one
def test_ctrl_c_is_one_line_exit_130_and_the_resume_is_exact(tmp_path, tmp_path_factory):
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


def test_one_policy_a_given_kind_is_a_usage_error_at_its_entry_point_and_a_body_may_return_its_code(capsys):
  """exit_code: a CheckpointError is 1 (a run's own saves) unless the entry point names it as what the user gave
  (kdjax.cli.inspection: 2); UsageError (a command line, parity.export's bad workdir or model) is 2; an unknown
  error has no code. run_main returns an int the body returns (a tool that showed what it could: 1), else 0."""
  from kdjax import errors
  assert exits.exit_code(errors.CheckpointError("x")) == exits.BROKE == 1
  assert exits.exit_code(errors.CheckpointError("x"), given=(errors.CheckpointError,)) == exits.USAGE == 2
  assert exits.exit_code(exits.UsageError("x")) == 2 and exits.exit_code(ValueError("x")) is None
  assert exits.run_main("tool", lambda: exits.BROKE) == 1
  assert exits.run_main("tool", lambda: {"a report": 1}) == 0
  def unreadable():
    raise errors.CheckpointError("/run/checkpoints/teacher/3: cannot restore")
  assert exits.run_main("tool", unreadable, given=(errors.CheckpointError,)) == 2
  assert capsys.readouterr().err == "tool: error: /run/checkpoints/teacher/3: cannot restore\n"


def test_flag_values_are_fresh_each_time_so_a_main_called_twice_keeps_nothing():
  from absl import flags
  define = lambda values: flags.DEFINE_bool("json", False, "j", flag_values=values)
  first = exits.flag_values(define)
  assert exits.parse_flags("tool", ["tool", "--json", "PATH"], config_flag=None, values=first) == ["tool", "PATH"]
  second = exits.flag_values(define)
  exits.parse_flags("tool", ["tool", "PATH"], config_flag=None, values=second)
  assert first.json and not second.json
