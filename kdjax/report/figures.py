"""The report's figures: matplotlib's object API, loaded when a figure is first drawn and never through
pyplot, so importing kdjax or writing a report leaves a notebook's backend as it was. `save` is the one place a
figure reaches the disk: a failure is a WriteError naming the file."""

import contextlib
import math
import pathlib
import zlib

from kdjax.errors import WriteError
from kdjax.phases import EMA_WEIGHTS_SUFFIX
from kdjax.phases import SWEEP_MARK

DPI = 110


# One colour per model in every figure (curves.png, ema_collapse.png, the over-seeds curves), fixed by the model's
# name rather than by the order a figure happens to draw its lines in: the five models of the phase table take
# matplotlib's first five default colours.
MODEL_COLORS = {"teacher": "C0", "student_ce": "C1", "student_kd": "C2", "student_kd_ema": "C3",
                "teacher_ema": "C4"}
# An EMA-sweep variant `<model>@<alpha>[+warmup]`: a shade of its model's family (student_kd_ema reds, teacher_ema
# purples; with warm-up oranges and blues), darker as 1 - alpha shrinks (alpha 0.9, 0.99, 0.999, 0.9999 apart).
SWEEP_COLORMAPS = {("student_kd_ema", False): "Reds", ("student_kd_ema", True): "Oranges",
                   ("teacher_ema", False): "Purples", ("teacher_ema", True): "Blues"}
# Any other name: one of the colours left, chosen from the name alone (a CRC, not Python's salted hash).
OTHER_COLORS = ("C5", "C6", "C7", "C8", "C9")


def color(model: str) -> str:
  """The colour of `model` (a report row's name) in every figure; its "(EMA weights)" row shares it (drawn
  dashed)."""
  name = model.removesuffix(EMA_WEIGHTS_SUFFIX)
  if name in MODEL_COLORS:
    return MODEL_COLORS[name]
  base, _, variant = name.partition(SWEEP_MARK)
  alpha, _, warmup = variant.partition("+")
  try:
    decades = -math.log10(1.0 - float(alpha))   # 0.9 -> 1, 0.99 -> 2, ...
  except (ValueError, ZeroDivisionError):
    decades = None
  colormap = SWEEP_COLORMAPS.get((base, warmup == "warmup"))
  if colormap is None or decades is None:
    return OTHER_COLORS[zlib.crc32(name.encode()) % len(OTHER_COLORS)]
  from matplotlib import colormaps
  from matplotlib import colors
  return colors.to_hex(colormaps[colormap](0.35 + 0.6 * min(max(decades, 0.0), 5.0) / 5.0))


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
