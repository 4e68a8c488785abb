"""The run's voice (kdjax/progress.py): a bar on a terminal, lines without carriage returns elsewhere."""

import io

from kdjax import progress


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
