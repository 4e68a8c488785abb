"""What a run says while it runs: its lines (one per model and epoch, the report) and a progress meter.

The library prints nothing itself: it logs to the `kdjax` logger, the run's lines at INFO (`say`) and what a user
should not miss at WARNING (`warn`); whoever wants the lines attaches a handler (`printing`: the command line
does, and `kdjax.run(..., verbose=True)`). Warnings are never silent: outside `printing` they still reach
stderr as `kdjax: warning: MESSAGE` (and propagate to the caller's logging as usual). The meter of a phase-epoch
(`EpochProgress`) is shown only then, and only with config.progress:
  stderr a terminal       one tqdm bar per phase-epoch, with images/s and the loss
  otherwise (a log file)  no bar (no carriage returns); a line every ~30 s with the steps done, images/s and the
                          time left, so a long epoch still shows it is alive; short epochs print none
"""

import contextlib
import logging
import sys
import time

from tqdm import tqdm

LOGGER = logging.getLogger("kdjax")
LINE_SECONDS = 30.0   # between two progress lines when there is no bar
WARNING_FORMAT = "kdjax: warning: %(message)s"


class _Handler(logging.StreamHandler):
  """A StreamHandler whose lines survive a stream that cannot encode them (PYTHONIOENCODING=ascii, a latin-1
  terminal): what the stream's encoding lacks is written as a backslash escape (Δ as \\u0394) instead of
  logging's "--- Logging error ---" traceback per line. Files are not written through it (they are UTF-8)."""

  def format(self, record: logging.LogRecord) -> str:
    return encodable(super().format(record), self.stream)


def encodable(text: str, stream) -> str:
  """`text` as `stream` can write it: unchanged where its encoding holds every character (UTF-8, a StringIO),
  else with the characters it lacks as backslash escapes."""
  encoding = getattr(stream, "encoding", None)
  if not encoding:
    return text
  try:
    text.encode(encoding)
    return text
  except UnicodeEncodeError:
    return text.encode(encoding, "backslashreplace").decode(encoding)
  except LookupError:   # an encoding Python does not know: leave it to the stream
    return text


class _StderrNow(_Handler):
  """A handler that writes to sys.stderr as it is when a record comes (a test's capture, a CLI's filter)."""

  def __init__(self):
    super().__init__(sys.stderr)

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr   # not setStream: it would flush the stream before, which may be closed by now
    super().emit(record)


_WARNINGS = _StderrNow()   # the library's warnings on stderr, with or without `printing`
_WARNINGS.setLevel(logging.WARNING)
_WARNINGS.setFormatter(logging.Formatter(WARNING_FORMAT))
LOGGER.addHandler(_WARNINGS)


def say(message: str) -> None:
  """One line of the run's output (a result, a summary, a notice)."""
  LOGGER.info(message)


def warn(message: str) -> None:
  """A warning: something the run continues through that a user should know (printed `kdjax: warning: ...`)."""
  LOGGER.warning(message)


def listening() -> bool:
  """Whether the run's lines are shown somewhere (`printing`, or the caller's own logging set to INFO)."""
  return LOGGER.isEnabledFor(logging.INFO)


class _Below(logging.Filter):
  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < self.level


@contextlib.contextmanager
def printing(stream=None, warnings=None):
  """While inside: the run's lines, as they are, to `stream` (sys.stdout at the time of the call), and its
  warnings as `kdjax: warning: MESSAGE` to `warnings` (sys.stderr at the time of the call)."""
  lines = _Handler(stream if stream is not None else sys.stdout)
  lines.setFormatter(logging.Formatter("%(message)s"))
  lines.addFilter(_Below(logging.WARNING))
  warned = _Handler(warnings if warnings is not None else sys.stderr)
  warned.setFormatter(logging.Formatter(WARNING_FORMAT))
  warned.setLevel(logging.WARNING)
  saved = LOGGER.level, LOGGER.propagate
  LOGGER.removeHandler(_WARNINGS)   # `warned` says them instead
  LOGGER.addHandler(lines)
  LOGGER.addHandler(warned)
  LOGGER.setLevel(logging.INFO)
  LOGGER.propagate = False  # e.g. absl's handler on the root logger would print every line a second time
  try:
    yield
  finally:
    for handler in (lines, warned):
      handler.flush()
      LOGGER.removeHandler(handler)
    LOGGER.addHandler(_WARNINGS)
    LOGGER.setLevel(saved[0])  # setLevel, not `level =`: the logger caches isEnabledFor until setLevel
    LOGGER.propagate = saved[1]


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class EpochProgress:
  """The meter of one phase-epoch: `update(images, loss)` after each step, `close()` at the end."""

  def __init__(self, description: str, steps: int, images: int, enabled: bool = True, stream=None,
               clock=time.monotonic, line_seconds: float = LINE_SECONDS):
    self.description, self.steps, self.images = description, steps, images
    self.stream = stream if stream is not None else sys.stderr
    self.clock, self.line_seconds = clock, line_seconds
    self.mode = None
    if enabled and listening():
      self.mode = "bar" if _is_terminal(self.stream) else "lines"
    self.bar = None
    if self.mode == "bar":
      self.bar = tqdm(total=images, desc=description, unit="img", leave=False, file=self.stream,
                      dynamic_ncols=True)
    self.start = self.last_line = clock()
    self.steps_done = self.images_done = 0

  def update(self, images: int, loss: float) -> None:
    self.steps_done += 1
    self.images_done += images
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
      self.bar.update(images)
    elif self.mode == "lines":
      now = self.clock()
      if now - self.last_line >= self.line_seconds and self.steps_done < self.steps:
        self.last_line = now
        say(self.line(now, loss))

  def line(self, now: float, loss: float) -> str:
    elapsed = max(now - self.start, 1e-9)
    rate = self.images_done / elapsed
    left = (self.images - self.images_done) / rate if rate > 0 else 0.0
    return (f"[{self.description}] step {self.steps_done}/{self.steps} "
            f"({100 * self.steps_done / max(self.steps, 1):.0f} %), {rate:,.0f} images/s, loss {loss:.4f}, "
            f"{_clock(elapsed)} elapsed, about {_clock(left)} left")

  def note(self, message: str) -> None:
    """One line of the run's output (say) while the meter runs, above a terminal's bar rather than into it."""
    if self.bar is not None:
      self.bar.clear()
    say(message)
    if self.bar is not None:
      self.bar.refresh()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False
