"""The report's figures: matplotlib's object API, loaded when a figure is first drawn and never through
pyplot, so importing kdjax or writing a report leaves a notebook's backend as it was. `save` is the one place a
figure reaches the disk: a failure is a WriteError naming the file."""

import contextlib
import pathlib

from kdjax.errors import WriteError

DPI = 110


def new(**kwargs):
  """An empty matplotlib Figure (kwargs as for Figure, e.g. figsize); draw with figure.subplots(...)."""
  from matplotlib.figure import Figure  # here: matplotlib costs ~0.3 s to import and only figures need it
  return Figure(**kwargs)


def save(figure, path) -> None:
  """Writes `figure` as a PNG at `path` (the Agg renderer, whatever backend the process uses)."""
  try:
    figure.savefig(path, dpi=DPI)
  except OSError as error:
    with contextlib.suppress(OSError):   # a half-written PNG (a full disk) is no figure
      pathlib.Path(path).unlink(missing_ok=True)
    raise WriteError(f"cannot write {path}: {error.strerror or error}") from None


def integer_ticks(axis) -> None:
  """Whole numbers only on `axis` (epochs, steps)."""
  from matplotlib import ticker
  axis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
