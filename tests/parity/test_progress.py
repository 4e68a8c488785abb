"""parity.check says what it is doing as it goes (issue 34): where each framework runs, first; then each
framework of each dtype and phase as it starts, with a step counter; at INFO through the kdjax logger."""

import io

import pytest

from kdjax import progress
from parity import check
from parity import harness
from tests.parity.test_study import small_config

pytestmark = [pytest.mark.usefixtures("one_torch_thread", "highest_matmul_precision"), pytest.mark.optimized]


def test_steps_says_the_start_then_a_counter_at_most_every_interval(monkeypatch):
  said = []
  monkeypatch.setattr(progress, "say", said.append)
  now = [0.0]
  steps = harness.Steps("  float64 teacher, kdjax", 4, every=10.0, clock=lambda: now[0])
  for seconds in (4.0, 12.0, 15.0, 30.0):   # a counter line at 12 s (>= 10 since the start), none at 15 s; the
    now[0] = seconds                         # last step says nothing (the check's own line follows)
    steps.tick()
  assert said == ["  float64 teacher, kdjax: 4 steps...", "  float64 teacher, kdjax: step 2/4 (12 s)"]


def test_a_check_says_each_framework_and_dtype_as_it_starts_with_a_step_counter(monkeypatch):
  monkeypatch.setattr(harness.Steps, "EVERY", 0.0)   # every step's line, so that a 2-step run shows them
  config = small_config()
  config.phases = ("teacher",)
  out = io.StringIO()
  with progress.printing(out, io.StringIO()):
    check.check(config, steps=2, student_decay=0.9, dtypes=("float64",), floors=False, out=out)
  lines = out.getvalue().splitlines()
  assert lines[0] == "parity.check: 2 steps of teacher in kdjax and PyTorch, in float64"
  assert lines[1].startswith("JAX ") and "PyTorch" in lines[1]   # where each framework runs, before any wait
  start = lines.index("  float64 teacher, kdjax (its first step compiles): 2 steps...")
  assert lines[start + 1].startswith("  float64 teacher, kdjax (its first step compiles): step 1/2 (")
  torch_start = lines.index("  float64 teacher, PyTorch: 2 steps...")
  assert lines[torch_start + 1].startswith("  float64 teacher, PyTorch: step 1/2 (")
  done = next(i for i, line in enumerate(lines) if line.startswith("  float64 teacher: 2 steps in each framework"))
  assert start < torch_start < done
