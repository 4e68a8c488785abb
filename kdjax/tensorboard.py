"""TensorBoard event files, written with tensorboardX (no TensorFlow): WORKDIR/tensorboard/<model>/, one
TensorBoard run per report row, so the models' curves share each chart.

    tensorboard --logdir runs/            (pip install 'kdjax[tensorboard]'; not needed to write the files)

Scalars, all against the training step (an epoch's values at the step that ends it; every phase has the same
steps per epoch):
  train/loss, train/top1       the epoch's mean training loss and accuracy (%) of the phase's own model
  train/step_loss              the loss of every config.log_every_steps-th step (0: none)
  val/loss, val/top1, val/top5 the whole validation split after each epoch, every model
metrics.jsonl stays the record; these files are a view of it. A phase that starts or resumes rewrites its
models' files, keeping the events up to the step it starts from and dropping those of an interrupted attempt
(as metrics.jsonl does), so TensorBoard shows each step once whichever loader it uses.
"""

import dataclasses
import pathlib
import struct
import uuid

from kdjax.config import ConfigError

TRAIN_TAGS = {"train_loss": "train/loss", "train_top1": "train/top1"}
VAL_TAGS = {"val_loss": "val/loss", "val_top1": "val/top1", "val_top5": "val/top5"}
STEP_LOSS_TAG = "train/step_loss"


@dataclasses.dataclass(frozen=True)
class Scalar:
  tag: str
  step: int
  value: float
  wall_time: float


def _event_pb2():
  # Imported when first needed: tensorboardX imports torch when it is installed (2 s), which `import kdjax` and
  # --help should not pay.
  from tensorboardX.proto import event_pb2
  return event_pb2


def _records(path: pathlib.Path):
  """The payloads of a TFRecord file (length, its CRC, payload, its CRC); a record cut short ends it."""
  with path.open("rb") as stream:
    while True:
      header = stream.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      payload = stream.read(length)
      if len(payload) < length or len(stream.read(4)) < 4:
        return
      yield payload


def event_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def read_scalars(folder) -> list[Scalar]:
  """Every scalar in the event files of one model's folder, in the order written."""
  event_pb2 = _event_pb2()
  scalars = []
  for file in event_files(pathlib.Path(folder)):
    for payload in _records(file):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        if value.WhichOneof("value") == "simple_value":
          scalars.append(Scalar(value.tag, event.step, value.simple_value, event.wall_time))
  return scalars


def read(workdir) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{model: {tag: [(step, value), ...]}} of a run's WORKDIR/tensorboard (e.g. for a notebook or a test)."""
  runs = {}
  for folder in sorted(path for path in pathlib.Path(workdir, "tensorboard").glob("*") if path.is_dir()):
    series: dict[str, list] = {}
    for scalar in read_scalars(folder):
      series.setdefault(scalar.tag, []).append((scalar.step, scalar.value))
    runs[folder.name] = series
  return runs


class _ModelWriter:
  """One model's folder: the events kept from before `start_step` rewritten into a new file, then appended."""

  def __init__(self, folder: pathlib.Path, start_step: int):
    from tensorboardX import SummaryWriter  # see _event_pb2
    earlier = event_files(folder)
    kept = [scalar for scalar in read_scalars(folder) if scalar.step <= start_step]
    # A unique suffix: a new file never takes the name of one it replaces (the name holds the second only).
    self.writer = SummaryWriter(str(folder), flush_secs=60, filename_suffix=f".{uuid.uuid4().hex[:8]}")
    for scalar in kept:
      self.writer.add_scalar(scalar.tag, scalar.value, scalar.step, walltime=scalar.wall_time)
    self.writer.flush()
    for file in earlier:  # after the rewrite is on disk
      file.unlink(missing_ok=True)

  def add(self, tag: str, value: float, step: int) -> None:
    self.writer.add_scalar(tag, float(value), step)


class Events:
  """The TensorBoard files of one run: `start_phase` when a phase trains, `epoch` and `step_losses` after each
  epoch, `close` at the end (also after an error: what was written stays)."""

  def __init__(self, folder, every_steps: int):
    if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 0:
      raise ConfigError(f"log_every_steps must be an integer >= 0 (0 = no step-level loss), got {every_steps!r}")
    self.folder = pathlib.Path(folder)
    self.every_steps = every_steps
    self.writers: dict[str, _ModelWriter] = {}

  def start_phase(self, models, start_step: int) -> None:
    """Opens the writers of a phase's models; the phase continues after `start_step` (0 when fresh)."""
    self.close()
    for name in models:
      self.writers[name] = _ModelWriter(self.folder / name, start_step)

  def epoch(self, model: str, step: int, record: dict) -> None:
    """The epoch's scalars of `model` from its metrics.jsonl record (None values skipped)."""
    for key, tag in {**TRAIN_TAGS, **VAL_TAGS}.items():
      if record.get(key) is not None:
        self.writers[model].add(tag, record[key], step)

  def step_losses(self, model: str, first_step: int, losses) -> None:
    """`losses[i]` is the loss of step first_step + i; every every_steps-th step is written."""
    if not self.every_steps:
      return
    for offset, loss in enumerate(losses):
      step = first_step + offset
      if step % self.every_steps == 0:
        self.writers[model].add(STEP_LOSS_TAG, loss, step)

  def flush(self) -> None:
    for model_writer in self.writers.values():
      model_writer.writer.flush()

  def close(self) -> None:
    for model_writer in self.writers.values():
      model_writer.writer.close()
    self.writers = {}
