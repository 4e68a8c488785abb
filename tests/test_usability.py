"""Usability of a run: the progress meter (a bar on a terminal, lines without carriage returns elsewhere) and the
training accuracy that run_epoch reads."""

import io

import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import progress
from kdjax import train


def test_run_epoch_train_top1_counts_images_not_batches():
  """10 images in batches of 4, 4, 2; the step reports each batch's mean accuracy (here: label == 0)."""
  labels = jnp.asarray(np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 0], np.int32))
  images = jnp.zeros((10, 2, 2, 1), jnp.uint8)

  def step(state, batch):
    return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0),
                                                "accuracy": jnp.mean(batch["label"] == 0)}

  state = train.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=())
  _, result = train.run_epoch(step, state, images, labels, np.arange(10), 4, False, "test", progress=False)
  assert result.train_top1 == pytest.approx(60.0)  # 6 of 10 images; the mean of batch means would be 66.7
  assert result.step_losses == [1.0, 1.0, 1.0]


# Progress: a bar on a terminal, lines in a log ------------------------------------------------------------------

class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_is_a_bar_with_images_per_second_on_a_terminal():
  stream = _Terminal()
  with progress.printing(io.StringIO()):
    meter = progress.EpochProgress("teacher epoch 1/2", steps=3, images=80, stream=stream)
    for images in (32, 32, 16):
      meter.update(images, 0.5)
    meter.close()
  assert meter.mode == "bar" and "img/s" in stream.getvalue()


def test_progress_off_a_terminal_is_a_line_every_interval_without_carriage_returns():
  now = [0.0]
  lines, stderr = io.StringIO(), io.StringIO()
  with progress.printing(lines):
    meter = progress.EpochProgress("teacher epoch 1/2", steps=4, images=128, stream=stderr,
                                   clock=lambda: now[0], line_seconds=30)
    for _ in range(4):
      now[0] += 20
      meter.update(32, 0.25)
    meter.close()
  assert meter.mode == "lines" and stderr.getvalue() == ""
  assert lines.getvalue().splitlines() == [
      "[teacher epoch 1/2] step 2/4 (50 %), 2 images/s, loss 0.2500, 0:40 elapsed, about 0:40 left"]


def test_progress_is_silent_unless_someone_listens_or_when_off():
  stream = _Terminal()
  assert progress.EpochProgress("x", 1, 1, stream=stream).mode is None  # nobody printing
  with progress.printing(io.StringIO()):
    assert progress.EpochProgress("x", 1, 1, enabled=False, stream=stream).mode is None
  assert stream.getvalue() == ""
