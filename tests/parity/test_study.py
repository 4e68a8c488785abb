"""A 2-epoch study on the embedded data set in both frameworks (every phase, the study's batches, per-epoch
validation), decided in float64, and parity.check end to end."""

import io
import subprocess
import sys
import pathlib

import numpy as np
import pytest

from configs import ema as ema_config
from parity import check
from parity import compare
from parity import harness
from parity import tolerances

pytestmark = [pytest.mark.usefixtures("one_torch_thread", "highest_matmul_precision"), pytest.mark.optimized]   # float64 / published references

ROOT = pathlib.Path(__file__).resolve().parents[2]


def small_config():
  config = ema_config.get_config()
  config.data.image_size = 16
  config.data.max_train_examples = 192  # 6 batches of 32 per epoch
  config.data.max_val_examples = 120
  config.batch_size = 32
  return config


@pytest.mark.slow  # a whole parity study in both frameworks
def test_two_epoch_study_agrees_per_epoch():
  """float64: per-epoch mean train loss within FLOAT64's loss bound; per-epoch validation counts equal, bar
  examples whose top-1 margin is within the final logits' difference (parity/tolerances.py)."""
  config = small_config()
  setup = harness.make_setup(config, "float64")
  batches = harness.epoch_batches(setup, 2)
  tol = tolerances.FLOAT64
  teacher = None
  for phase in config.phases:
    run = harness.run_phase(setup, phase, batches, teacher_params=teacher)
    rows = compare.rows(run, setup.dataset.val_labels)
    assert all(row.ok for row in rows), compare.table(rows)
    jax_losses, torch_losses = np.array(run.jax.train_losses), np.array(run.torch.train_losses)
    assert len(jax_losses) == 2
    assert np.all(np.abs(jax_losses - torch_losses) <= tol.loss_atol + tol.loss_rtol * np.abs(torch_losses)), (
        phase, jax_losses, torch_losses)
    allowed = max(row.ambiguous for row in rows)
    assert np.all(np.abs(np.subtract(run.jax.val_correct, run.torch.val_correct)) <= allowed), (
        phase, run.jax.val_correct, run.torch.val_correct)
    if phase == "teacher":
      teacher = run.jax.params["teacher"]


@pytest.mark.slow  # parity.check end to end in both frameworks
def test_check_prints_both_tables_and_passes():
  out = io.StringIO()
  config = small_config()
  config.phases = ("teacher", "student_kd_ema")
  rows = check.check(config, steps=3, student_decay=0.9, out=out)
  text = out.getvalue()
  assert all(row.ok for row in rows), text
  models = ["teacher", "student_kd_ema", "teacher_ema", "student_kd_ema (EMA weights)"]
  assert [(row.dtype, row.model) for row in rows] == [("float32", m) for m in models] + [("float64", m) for m in models]
  assert text.count("| model |") == 2 and "all within tolerances" in text
  assert "float64: decides semantics" in text and "JAX highest" in text  # the precision both sides ran at
  float32 = rows[:4]
  assert all(row.mirror_params is not None and row.rounding_params is not None for row in float32)
  assert float32[0].loss_steps_decided >= 1 and float32[0].rounding_params > 0


def test_check_fails_past_the_tolerances(monkeypatch):
  """With zero float64 tolerances nothing can pass: the rows carry failures, and they are printed."""
  zero = tolerances.Tolerances(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
  monkeypatch.setattr(tolerances, "FLOAT64", zero)
  config = small_config()
  config.phases = ("teacher",)
  out = io.StringIO()
  rows = check.check(config, steps=2, student_decay=0.9, dtypes=("float64",), out=out)
  assert not rows[0].ok and "FAIL float64 teacher" in out.getvalue()


@pytest.mark.parametrize("arguments,message,fresh", [
    (["--config.kd.temperature=-1"], "kd.temperature", False),   # its main in process: PyTorch is loaded by then
    (["--dtype=float16"], "flag --dtype=float16", True),          # the others in the command's fresh process
    (["--steps=0"], "--steps must be >= 1", True),
    (["extra"], "unexpected arguments: extra", True),
])
def test_check_command_line_errors(arguments, message, fresh, monkeypatch, capsys):
  args = ["--config", "configs/ema.py", "--steps", "2", *arguments]
  if fresh:
    done = subprocess.run([sys.executable, "-m", "parity.check", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  else:
    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    code = check.main(args)
    done = subprocess.CompletedProcess(args, code, *capsys.readouterr())
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("parity.check: error: ") and message in lines[0], done.stderr
