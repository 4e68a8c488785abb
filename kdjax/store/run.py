"""A finished (or interrupted) run read back: `load_run(workdir)` gives its config, its nets and any model's saved
params (for kdjax.cli.inspection and parity.export)."""

import dataclasses
import json
import pathlib

import ml_collections

from kdjax import data as data_lib
from kdjax import phases
from kdjax.config import nets as config_nets
from kdjax.store import checkpoints as ckpt_lib


@dataclasses.dataclass
class Run:
  """A workdir read back: its config and a way to build its nets and read any model's params."""

  workdir: pathlib.Path
  config: ml_collections.ConfigDict

  def net(self, name: str, num_classes: int):
    """The Flax net of a model (report row name) of this run."""
    return config_nets.from_config(phases.model(name).net, num_classes, self.config)

  def params(self, name: str, epoch: int | None = None) -> tuple[dict, dict, int]:
    """(params, meta, epoch) of model `name` (a report row, e.g. "student_kd (EMA weights)") at its saved
    `epoch` (default: the latest)."""
    try:
      spec = phases.model(name)
    except KeyError:
      raise ckpt_lib.CheckpointError(f"unknown model {name!r}; known: {', '.join(phases.MODEL_ORDER)} and "
                                     f"'<student phase>{phases.EMA_WEIGHTS_SUFFIX}'") from None
    folder = self.workdir / "checkpoints" / (spec.name if spec.own_checkpoint else spec.phase)
    if not ckpt_lib.saved_epochs(folder):
      known = [f.name for f in ckpt_lib.model_folders(self.workdir / "checkpoints")]
      raise ckpt_lib.CheckpointError(f"{folder}: no such model checkpoint (saved models: "
                                     f"{', '.join(known) or 'none'})")
    reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
    tree, meta, epoch = reader.restore(epoch)
    reader.close()
    field = "params" if spec.own_checkpoint else spec.state_field
    if field not in tree:
      raise ckpt_lib.CheckpointError(f"{folder / str(epoch)}: holds no {field} for {name!r}")
    return tree[field], meta, epoch

  def dataset(self) -> data_lib.Dataset:
    return data_lib.load(self.config.data)


def load_run(workdir) -> Run:
  """A workdir's config.json as a Run; CheckpointError naming the path when it is not a kdjax workdir."""
  workdir = pathlib.Path(workdir).absolute()
  if not workdir.is_dir():
    raise ckpt_lib.CheckpointError(f"{workdir}: no such workdir")
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise ckpt_lib.CheckpointError(f"{workdir}: not a kdjax workdir (no config.json)")
  content = read_config_json(config_path)
  try:
    config = ml_collections.ConfigDict(content)
  except (ValueError, TypeError, AttributeError) as error:
    raise ckpt_lib.CheckpointError(f"{config_path}: unreadable config ({error})") from None
  return Run(workdir, config)


def read_config_json(path: pathlib.Path) -> dict:
  """A workdir's config.json as a dict; CheckpointError naming the path when it is unreadable or not an
  object (a JSON list, say)."""
  try:
    content = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise ckpt_lib.CheckpointError(f"{path}: unreadable config ({error})") from None
  if not isinstance(content, dict):
    raise ckpt_lib.CheckpointError(f"{path}: unreadable config (a JSON {type(content).__name__}, not an "
                                   f"object)")
  return content
