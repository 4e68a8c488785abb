"""The report's figures: matplotlib's object API, loaded when a figure is first drawn and never through
pyplot, so importing kdjax or writing a report leaves a notebook's backend as it was. `save` is the one place a
figure reaches the disk: a failure is a WriteError naming the file."""

import contextlib
import pathlib

from kdjax.errors import WriteError

DPI = 110


def new(**kwargs):
  """An empty matplotlib Figure (kwargs as for Figure, e.g. figsize); draw with figure.subplots(...). Its
  layout is "constrained", which keeps an overall title and legends outside the panels clear of each other."""
  from matplotlib.figure import Figure  # here: matplotlib costs ~0.3 s to import and only figures need it
  return Figure(**{"layout": "constrained", **kwargs})


def title(report: dict) -> str:
  """A figure's overall title from report.json's content: the data set, the config's phases, epochs and KD
  temperature, and the number of seeds, so a PNG read without its report says what it shows."""
  config = report.get("config", {})
  dataset = report.get("dataset", {})
  seeds = report.get("num_seeds") or config.get("num_seeds") or 1
  parts = [f"{dataset.get('name', config.get('data', {}).get('name', '?'))} "
           f"({dataset.get('train_examples', '?')} train / {dataset.get('val_examples', '?')} validation images)"]
  if config:
    parts.append(f"{config.get('epochs')} epoch(s), KD T = {config.get('kd', {}).get('temperature')}")
  parts.append(f"{seeds} seed{'s' if seeds != 1 else ''}")
  phases = ", ".join(config.get("phases", []))
  return " · ".join(parts) + (f"\nphases: {phases}" if phases else "")


def finish(figure, axes, suptitle: str | None = None, legend_columns: int = 3) -> None:
  """What every figure of the report shares: `suptitle` over all panels; y values written out in full (no
  offset such as `1e-7+3.045e-3` over a panel's title); each panel's legend below it, off the data."""
  from matplotlib import ticker
  if suptitle:
    figure.suptitle(suptitle, fontsize=10)
  for axis in axes:
    if not axis.get_visible():
      continue
    if axis.get_yscale() == "linear":
      formatter = ticker.ScalarFormatter(useOffset=False)
      formatter.set_scientific(False)
      axis.yaxis.set_major_formatter(formatter)
    handles, labels = axis.get_legend_handles_labels()
    if handles:
      axis.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=min(legend_columns, len(handles)), frameon=False)


def same_x_range(axes, low: float, high: float) -> None:
  """One x range for every panel of a figure, so that their points line up."""
  for axis in axes:
    axis.set_xlim(low, high)


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
