"""TensorBoard event files without TensorFlow (tensorboardX's protobufs and record CRC):
WORKDIR/tensorboard/<model>/, one TensorBoard run per report row, so the models' curves share each chart.

    tensorboard --logdir runs/            (pip install tensorboard; not needed to write the files)

Scalars, all against the training step (an epoch's values at the step that ends it; every phase has the same
steps per epoch):
  train/loss, train/top1       the epoch's mean training loss and accuracy (%) of the phase's own model
  train/step_loss              the loss of every config.log_every_steps-th step (0: none)
  val/loss, val/top1, val/top5 the whole validation split after each epoch, every model
Text (TensorBoard's Text tab), in WORKDIR/tensorboard/config/, rewritten by every run or resume:
  config/text_summary          the run's config.json, one `field = value` a line
metrics.jsonl stays the record; these files are a view of it. A phase that starts or resumes rewrites its
models' files, keeping the events up to the step it starts from and dropping those of an interrupted attempt
(as metrics.jsonl does), so TensorBoard shows each step once whichever loader it uses.
"""

import dataclasses
import pathlib
import socket
import struct
import time
import uuid

from kdjax.config import defaults as config_defaults
from kdjax.errors import ConfigError
from kdjax.store.rundir import WriteError

TRAIN_TAGS = {"train_loss": "train/loss", "train_top1": "train/top1"}
VAL_TAGS = {"val_loss": "val/loss", "val_top1": "val/top1", "val_top5": "val/top5"}
STEP_LOSS_TAG = "train/step_loss"


@dataclasses.dataclass(frozen=True)
class Scalar:
  tag: str
  step: int
  value: float
  wall_time: float


def _protos():
  """tensorboardX's event and summary protobufs and record CRC, imported when first needed. tensorboardX's
  package import also tries `import torch` (for its own SummaryWriter's tensor types, which kdjax does not use):
  1.3-2 s and a few hundred MB in every run. When torch is not loaded yet, that import is answered "not
  installed" for the moment tensorboardX is imported (a None entry in sys.modules, Python's documented way),
  then torch is importable again as before. A process that already holds torch is left as it is."""
  import sys
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None
    try:
      import tensorboardX  # noqa: F401
    finally:
      del sys.modules["torch"]
  from tensorboardX.proto import event_pb2, summary_pb2
  from tensorboardX.record_writer import masked_crc32c
  return event_pb2, summary_pb2, masked_crc32c


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


def _record(payload: bytes, masked_crc32c) -> bytes:
  header = struct.pack("<Q", len(payload))
  return (header + struct.pack("<I", masked_crc32c(header)) + payload
          + struct.pack("<I", masked_crc32c(payload)))


def event_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def read_scalars(folder) -> list[Scalar]:
  """Every scalar in the event files of one model's folder, in the order written."""
  event_pb2 = _protos()[0]
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
  for folder in sorted(path for path in pathlib.Path(workdir, "tensorboard").glob("*")
                       if path.is_dir() and path.name != CONFIG_RUN):
    series: dict[str, list] = {}
    for scalar in read_scalars(folder):
      series.setdefault(scalar.tag, []).append((scalar.step, scalar.value))
    runs[folder.name] = series
  return runs


CONFIG_RUN = "config"   # the folder, and so the TensorBoard run, that holds the config text
CONFIG_TAG = "config/text_summary"


def config_text(config_json: dict) -> str:
  """The config (config.json's content) as TensorBoard's Text tab shows it (markdown): one `field = value` a
  line, sorted, in a code block."""
  lines = [f"{name} = {value!r}" for name, value in sorted(config_defaults.flatten(config_json).items())]
  return "```\n" + "\n".join(lines) + "\n```"


def write_config(folder, config_json: dict) -> pathlib.Path:
  """WORKDIR/tensorboard/config/: the run's config as a text summary (TensorBoard's text plugin), replacing
  any earlier one; WriteError naming the file when it cannot be written."""
  event_pb2, summary_pb2, masked_crc32c = _protos()
  from tensorboardX.proto import plugin_text_pb2, tensor_pb2, tensor_shape_pb2
  folder = pathlib.Path(folder) / CONFIG_RUN
  earlier = event_files(folder)
  metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
      plugin_name="text", content=plugin_text_pb2.TextPluginData(version=0).SerializeToString()))
  tensor = tensor_pb2.TensorProto(dtype="DT_STRING", string_val=[config_text(config_json).encode("utf-8")],
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                      dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
  events = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"),
            event_pb2.Event(wall_time=time.time(), step=0, summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=CONFIG_TAG, metadata=metadata, tensor=tensor)]))]
  path = folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"
  try:
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(_record(event.SerializeToString(), masked_crc32c) for event in events))
  except OSError as error:
    raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
  for file in earlier:
    file.unlink(missing_ok=True)
  return path


def read_texts(workdir) -> dict[str, str]:
  """{tag: text} of the text summaries in WORKDIR/tensorboard/config/ (the config, see write_config)."""
  event_pb2 = _protos()[0]
  texts = {}
  for file in event_files(pathlib.Path(workdir, "tensorboard", CONFIG_RUN)):
    for payload in _records(file):
      for value in event_pb2.Event.FromString(payload).summary.value:
        if value.metadata.plugin_data.plugin_name == "text":
          texts[value.tag] = value.tensor.string_val[0].decode("utf-8")
  return texts


class _EventFile:
  """One model's event file of this attempt. The events kept from before `start_step` are copied into it, then
  the earlier files removed. Events are appended at each `flush`, the file is never held open in between: no
  writer thread, and a failing disk is a WriteError here, not a traceback from elsewhere."""

  def __init__(self, folder: pathlib.Path, start_step: int):
    self.event_pb2, self.summary_pb2, self.masked_crc32c = _protos()
    earlier = event_files(folder)
    kept = [scalar for scalar in read_scalars(folder) if scalar.step <= start_step]
    # The name TensorBoard looks for; the random part keeps a new file from taking the name of one it replaces.
    self.path = folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{uuid.uuid4().hex[:8]}"
    self.pending = [self.event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]
    for scalar in kept:
      self.add(scalar.tag, scalar.value, scalar.step, scalar.wall_time)
    self.flush()
    for file in earlier:  # after the copy is on disk
      file.unlink(missing_ok=True)

  def add(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
    summary = self.summary_pb2.Summary(value=[self.summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
    self.pending.append(self.event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=step,
                                             summary=summary))

  def flush(self) -> None:
    if not self.pending:
      return
    data = b"".join(_record(event.SerializeToString(), self.masked_crc32c) for event in self.pending)
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with self.path.open("ab") as stream:
        stream.write(data)
    except OSError as error:
      raise WriteError(f"cannot write {self.path}: {error.strerror or error}") from None
    self.pending = []


class Events:
  """The TensorBoard files of one run: `start_phase` when a phase trains; after each epoch `epoch` and
  `step_losses`, then `flush` (the epoch's events on disk); `close` at the end, also after an error."""

  def __init__(self, folder, every_steps: int, enabled: bool = True):
    if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 0:
      raise ConfigError(f"log_every_steps must be an integer >= 0 (0 = no step-level loss), got {every_steps!r}")
    self.folder = pathlib.Path(folder)
    self.every_steps = every_steps
    self.files: dict[str, _EventFile] = {}
    self.enabled = enabled   # False: a multi-host run's processes but 0 write nothing

  def start_phase(self, models, start_step: int) -> None:
    """Opens the event files of a phase's models; the phase continues after `start_step` (0 when fresh)."""
    self.close()
    if not self.enabled:
      self.files = {name: _NoEvents() for name in models}
      return
    for name in models:
      self.files[name] = _EventFile(self.folder / name, start_step)

  def epoch(self, model: str, step: int, record: dict) -> None:
    """The epoch's scalars of `model` from its metrics.jsonl record (None values skipped)."""
    for key, tag in {**TRAIN_TAGS, **VAL_TAGS}.items():
      if record.get(key) is not None:
        self.files[model].add(tag, record[key], step)

  def step_losses(self, model: str, first_step: int, losses) -> None:
    """`losses[i]` is the loss of step first_step + i; every every_steps-th step is written."""
    if not self.every_steps:
      return
    for offset, loss in enumerate(losses):
      step = first_step + offset
      if step % self.every_steps == 0:
        self.files[model].add(STEP_LOSS_TAG, loss, step)

  def flush(self) -> None:
    for event_file in self.files.values():
      event_file.flush()

  def close(self) -> None:
    """Forgets the phase's files. What `flush` wrote stays; events added since are dropped: the epoch they
    belong to did not finish (and a second write error must not hide the first)."""
    self.files = {}


class _NoEvents:
  """Takes a model's events and writes nothing (Events with enabled False)."""

  def add(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
    pass

  def flush(self) -> None:
    pass
