"""Issue 24: no wrong result with exit 0, and every entry point as good as kdjax.main. In-process with tiny
configs (tests/conftest.tiny_config) where the process boundary is not what is tested."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.cli import exits
from kdjax.errors import CheckpointError
from kdjax.errors import ConfigError
from kdjax.errors import DivergenceError
from kdjax.study import acceptance
from kdjax.study import experiment
from kdjax.study.builder import Setup
from kdjax.training import losses
from kdjax.training import train

from tests.conftest import tiny_config
from tests import ckpt_support as support


def _teacher_only(**overrides):
  return tiny_config(**{"phases": ("teacher",), "epochs": 1, **overrides})


def _exit_code(error: BaseException) -> int:
  return next(code for kinds, code in exits.EXIT_CODES if isinstance(error, kinds))


def _nan_validation_loss(monkeypatch):
  """Setup.evaluate as a diverged net's: finite logits in, val_loss NaN (weights ~1e23 give exactly that while
  the training loss, read before the last update, is still finite)."""
  original = Setup.evaluate

  def diverged(self, net, params):
    metrics, logits = original(self, net, params)
    return dict(metrics, val_loss=float("nan")), logits

  monkeypatch.setattr(Setup, "evaluate", diverged)


# --- a phase's result is accepted only if finite and trained ----------------------------------------------------

def test_a_non_finite_validation_loss_stops_the_run_and_nothing_is_kept(tmp_path, monkeypatch):
  _nan_validation_loss(monkeypatch)
  with pytest.raises(DivergenceError) as error:
    experiment.train_and_evaluate(_teacher_only(), tmp_path)
  message = str(error.value)
  assert message.startswith("phase teacher, epoch 1: teacher's val_loss is nan") and "\n" not in message
  assert "optimizer.learning_rate=" in message and _exit_code(error.value) == 1
  assert not (tmp_path / "checkpoints" / "teacher").exists() or not any((tmp_path / "checkpoints" / "teacher").iterdir())
  metrics = tmp_path / "metrics.jsonl"
  assert not metrics.exists() or metrics.read_text() == ""
  assert not (tmp_path / "report.json").exists() and not (tmp_path / "report.md").exists()


def test_a_split_that_makes_no_full_batch_is_refused_before_anything_is_written(tmp_path):
  config = _teacher_only(**{"batch_size": 1000, "data.drop_remainder": True})
  with pytest.raises(ConfigError) as error:
    experiment.train_and_evaluate(config, tmp_path / "w")
  assert "batch_size=1000" in str(error.value) and "data.drop_remainder=True" in str(error.value)
  assert "240 training examples" in str(error.value) and _exit_code(error.value) == 2
  assert not (tmp_path / "w" / "config.json").exists()


@pytest.mark.parametrize("result, evaluated, named", [
    (train.EpochResult(train_loss=float("nan"), steps=0, seconds=0.0, train_top1=0.0), {}, "no training step"),
    (train.EpochResult(train_loss=float("inf"), steps=3, seconds=0.0, train_top1=0.0), {}, "train_loss (inf)"),
    (train.EpochResult(train_loss=1.5e28, steps=3, seconds=0.0, train_top1=0.0),
     {"student_ce": {"val_loss": float("nan"), "val_top1": 10.0, "val_top5": 50.0}}, "student_ce's val_loss"),
    (train.EpochResult(train_loss=0.5, steps=3, seconds=0.0, train_top1=0.0),
     {"student_kd": {"val_loss": 0.5, "val_top1": 90.0, "val_top5": 99.0},
      "student_kd_avg": {"val_loss": 0.4, "val_top1": float("nan"), "val_top5": 99.0}}, "student_kd_avg's val_top1"),
])
def test_each_unaccepted_epoch_is_one_line_naming_phase_epoch_and_metric(result, evaluated, named):
  config = tiny_config(**{"phases": ("teacher", "student_kd")})
  with pytest.raises(DivergenceError) as error:
    acceptance.check_epoch(config, "student_kd", 2, result, evaluated)
  assert str(error.value).startswith("phase student_kd, epoch 2: ") and named in str(error.value)
  assert "\n" not in str(error.value)


def test_a_finite_trained_epoch_is_accepted():
  result = train.EpochResult(train_loss=0.5, steps=1, seconds=0.0, train_top1=0.0)
  acceptance.check_epoch(tiny_config(), "teacher", 1, result,
                         {"teacher": {"val_loss": 0.5, "val_top1": 90.0, "val_top5": 99.0}})


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


# --- KD losses are not negative ---------------------------------------------------------------------------------

def test_the_kd_loss_at_temperature_1000_is_not_negative():
  """Nearly agreeing logits at T = 1000: each log-softmax is ~-log K ± 1e-5, and the float32 sum of
  p·(log p − log q) comes out below 0 for many examples; T² = 10⁶ makes that a visibly negative loss."""
  rng = np.random.default_rng(0)
  teacher = jnp.asarray(rng.normal(size=(256, 10)) * 5, jnp.float32)
  student = teacher + jnp.asarray(rng.normal(size=(256, 10)) * 0.01, jnp.float32)
  temperature = 1000.0
  log_p = jax.nn.log_softmax(teacher / temperature)
  unclamped = (jnp.exp(log_p) * (log_p - jax.nn.log_softmax(student / temperature))).sum(-1)
  assert float(unclamped.mean()) * temperature**2 < 0   # the rounding this test is about
  assert float(losses.distill_kl(student, teacher, temperature)) >= 0.0
  assert float(losses.student_objective(student, teacher, jnp.zeros(256, jnp.int32), temperature, 1.0, 0.0)) >= 0.0


def test_the_clamp_leaves_a_positive_kl_and_its_gradient_as_they_were():
  rng = np.random.default_rng(1)
  teacher = jnp.asarray(rng.normal(size=(64, 10)) * 3, jnp.float32)
  student = jnp.asarray(rng.normal(size=(64, 10)) * 3, jnp.float32)

  def unclamped(s):
    log_p = jax.nn.log_softmax(teacher / 4.0)
    return (jnp.exp(log_p) * (log_p - jax.nn.log_softmax(s / 4.0))).sum(-1).mean() * 16.0

  value, grad = jax.value_and_grad(lambda s: losses.distill_kl(s, teacher, 4.0))(student)
  value_ref, grad_ref = jax.value_and_grad(unclamped)(student)
  assert float(value) == float(value_ref)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_ref))


# --- SIGTERM ------------------------------------------------------------------------------------------------------

# kdjax.main on a tiny teacher-only run that waits before saving epoch 2 (to be stopped there).
_WAIT_BEFORE_SECOND_SAVE = support.hold_before_save("epoch == 2", seconds=300)
_TINY_TEACHER = ["--config", "kdjax/config/shipped/default.py", "--config.phases=('teacher',)", "--config.epochs=2",
                 "--config.data.image_size=16", "--config.data.max_train_examples=64",
                 "--config.data.max_val_examples=32", "--config.progress=False"]


def test_sigterm_is_one_line_saying_how_to_resume_exit_143(tmp_path):
  import signal
  from tests import ckpt_support as support
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
  resumed = support.kdjax(_TINY_TEACHER, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "[teacher] resuming after epoch 1" in resumed.stdout


# --- a corrupt teacher_ema save ---------------------------------------------------------------------------------

def test_a_corrupt_teacher_ema_save_is_named_and_rewritten_from_the_phases_own_save(tmp_path, caplog):
  from tests import ckpt_support as support
  from kdjax.store import checkpoints as ckpt_lib
  config = tiny_config(**{"phases": ("teacher", "student_kd_ema"), "epochs": 1})
  first = experiment.train_and_evaluate(config, tmp_path)
  step = tmp_path / "checkpoints" / "teacher_ema" / "1"
  message = support.corrupt_an_array(step)
  with caplog.at_level("WARNING", logger="kdjax"):
    again = experiment.train_and_evaluate(config, tmp_path)
  warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"
              and support.CHANCE_CAUTION not in record.getMessage()]   # the tiny teacher's, not the save's
  assert len(warnings) == 1 and warnings[0].startswith(message) and f"rewriting {step}" in warnings[0]
  assert again["models"]["teacher_ema"]["val_loss"] == first["models"]["teacher_ema"]["val_loss"]
  tree, meta, _ = ckpt_lib.ModelCheckpoints(step.parent, read_only=True).restore(1)   # intact again
  assert meta["model"] == "teacher_ema" and meta["finished"]


# --- a truncated report.json ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_teacher(tmp_path_factory):
  """A finished 1-epoch teacher-only run (tiny): (workdir, config, report)."""
  workdir = tmp_path_factory.mktemp("teacher_run")
  config = _teacher_only()
  return workdir, config, experiment.train_and_evaluate(config, workdir)


def _copy(workdir, tmp_path):
  import shutil
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  return copy


def test_a_truncated_report_is_flagged_by_inspect_and_evaluate(finished_teacher, tmp_path, capsys):
  from kdjax.cli import inspection
  workdir = _copy(finished_teacher[0], tmp_path)
  report = workdir / "report.json"
  report.write_text(report.read_text()[:200])
  assert inspection.main([str(workdir)]) == 1
  error = capsys.readouterr().err.strip().splitlines()
  assert len(error) == 1 and error[0].startswith(f"kdjax.cli.inspection: error: {report}: not valid JSON")
  assert inspection.main([str(workdir), "--evaluate", "teacher"]) == 1
  captured = capsys.readouterr()
  assert "top-1" in captured.out and "Traceback" not in captured.err
  assert captured.err.strip().splitlines() == error


# --- disk full ----------------------------------------------------------------------------------------------------

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


def test_a_figure_that_cannot_be_written_is_named_and_report_md_does_not_link_it(finished_teacher, tmp_path,
                                                                                 monkeypatch):
  import errno
  from matplotlib.figure import Figure
  from kdjax.errors import WriteError
  workdir = _copy(finished_teacher[0], tmp_path)
  (workdir / "report.md").unlink()
  (workdir / "curves.png").unlink()

  def disk_full(self, path, **kwargs):
    open(path, "wb").write(b"\x89PNG half")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(Figure, "savefig", disk_full)
  with pytest.raises(WriteError) as error:
    experiment.train_and_evaluate(finished_teacher[1], workdir)
  assert str(error.value) == f"cannot write {workdir / 'curves.png'}: No space left on device"
  assert not (workdir / "curves.png").exists() and not (workdir / "report.md").exists()


# --- the Python API -------------------------------------------------------------------------------------------------

def test_run_with_a_plain_dict_is_one_line_config_error(tmp_path):
  import kdjax
  with pytest.raises(kdjax.ConfigError) as error:
    kdjax.run({"epochs": 1}, tmp_path / "w")
  assert "a dict is not a kdjax config" in str(error.value) and "kdjax.configs.get(" in str(error.value)
  assert not (tmp_path / "w").exists()


def test_a_missing_manual_dir_from_the_api_raises_data_error_and_leaves_no_lock(tmp_path):
  import kdjax
  config = kdjax.configs.get("default", **{"data.name": "image_folder",
                                           "data.manual_dir": str(tmp_path / "no_such_folder")})
  with pytest.raises(kdjax.DataError):
    kdjax.run(config, tmp_path / "w")
  assert list((tmp_path / "w").iterdir()) == []


def test_the_run_docstring_names_only_errors_kdjax_exports():
  import re
  import kdjax
  named = set(re.findall(r"\b([A-Z][A-Za-z]*Error)\b", kdjax.run.__doc__))
  assert named and all(hasattr(kdjax, name) and name in kdjax.__all__ for name in named)
  from kdjax import errors
  assert kdjax.CheckpointError is errors.CheckpointError and kdjax.WriteError is errors.WriteError


def test_digits_says_it_does_not_read_data_manual_dir(tmp_path, caplog):
  from kdjax import data as data_lib
  config = tiny_config(**{"data.manual_dir": str(tmp_path / "missing")})
  with caplog.at_level("WARNING", logger="kdjax"):
    data_lib.load(config.data)
  [warning] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
  assert warning.startswith(f"data.manual_dir={tmp_path / 'missing'} is not read: data.name=digits")
  assert "does not exist" in warning


# --- the command line ---------------------------------------------------------------------------------------------

def test_helpfull_and_help(tmp_path):
  from tests.test_usability_cli import kdjax_main
  full = kdjax_main("--helpfull", cwd=tmp_path)
  assert full.returncode == 0 and "is required" not in full.stdout + full.stderr
  assert "--show_config" in full.stdout and "--workdir" in full.stdout
  short = kdjax_main("--help", cwd=tmp_path)
  assert short.returncode == 0
  rows = [line for line in short.stdout.splitlines() if line.startswith("  ema_sweep.py")]
  assert len(rows) == 1 and rows[0].startswith("  ema_sweep.py ")   # not "ema_sweep.pyThe seed's ..."


def test_show_config_refuses_an_invalid_value_in_one_line(tmp_path):
  from tests.test_usability_cli import kdjax_main
  result = kdjax_main("--config", "kd.py", "--show_config", "--config.kd.temperature=-1", cwd=tmp_path)
  assert result.returncode == 2 and result.stdout == ""
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("kdjax: error: ") and "kd.temperature" in line


# --- never silent; the config in TensorBoard -------------------------------------------------------------------------

def test_a_run_says_when_it_compiles_and_evaluates_and_puts_its_config_in_tensorboard(tmp_path, caplog):
  from kdjax.store import tensorboard
  config = _teacher_only(**{"kd.temperature": 3.0})
  with caplog.at_level("INFO", logger="kdjax"):
    experiment.train_and_evaluate(config, tmp_path)
  lines = [record.getMessage() for record in caplog.records]
  compiling = lines.index("[teacher epoch 1/1] compiling the training step")
  assert lines[compiling + 1].startswith("[teacher epoch 1/1] compiled the training step and ran it once in ")
  assert "[teacher] evaluating teacher on the 120 validation examples" in lines
  assert any(line.startswith("writing report.json, the figures and report.md to ") for line in lines)
  texts = tensorboard.read_texts(tmp_path)
  assert list(texts) == [tensorboard.CONFIG_TAG]
  shown = texts[tensorboard.CONFIG_TAG].splitlines()
  assert "epochs = 1" in shown and "kd.temperature = 3.0" in shown and "phases = ['teacher']" in shown
  assert set(tensorboard.read(tmp_path)) == {"teacher"}   # the scalars' runs: the models only


# --- figures ------------------------------------------------------------------------------------------------------

def _drawn(figure):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  FigureCanvasAgg(figure).draw()
  return figure


def _legends_below_their_panels(figure):
  renderer = figure.canvas.get_renderer()
  for axis in figure.axes:
    if axis.get_visible() and axis.get_legend() is not None:
      assert axis.get_legend().get_window_extent(renderer).y1 <= axis.get_window_extent(renderer).y0 + 1


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


# --- a resume on another number of devices ----------------------------------------------------------------------

_TWO_DEVICES = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
jax.config.update("jax_platforms", "cpu")
from tests.test_issue24 import _teacher_only
from kdjax.study import experiment
experiment.train_and_evaluate(_teacher_only(**{"mesh.num_devices": 2}), sys.argv[1])
"""


@pytest.mark.slow  # resumes on 4 forced host devices in subprocesses
def test_a_resume_on_another_number_of_devices_says_so_and_the_report_lists_each_part(tmp_path, caplog):
  import subprocess
  import sys
  from tests import ckpt_support as support
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
