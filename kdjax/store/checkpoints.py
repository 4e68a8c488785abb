"""Orbax checkpoints: WORKDIR/checkpoints/<model>/<epoch>/ holds {"state": the model's pytree, "meta": JSON}.

Models: teacher, student_ce, student_kd, student_kd_ema (each the whole TrainState as a dict: params,
opt_state, step, teacher_params = the frozen or EMA-updated teacher, ema_params = the student-weights average)
and teacher_ema (the EMA-updated teacher, {"params"} only). The meta of a save holds the phase, the epoch, the
step, the data-order state, the metrics so far and the run's config (see store.meta.phase_meta), so a
checkpoint folder copied elsewhere still says what it is.

Saves are Orbax's atomic commits: a step is written into `<epoch>.orbax-checkpoint-tmp-*` and renamed when
complete, so a kill during a save leaves the earlier steps as they were (the half-written folder is removed by
the next writer). Every failure to read or write is a CheckpointError whose one-line message names the path.

Integrity (Orbax does not notice a flipped byte: docs/checkpoints.md#what-a-save-holds): `save` writes into the
meta, under "integrity", the sha256 of every array (dtype, shape and bytes, keyed by its path, e.g.
"params/fc/kernel") and of the rest of the meta; `restore` recomputes them and raises CorruptCheckpointError naming
the first that differs. A step without state/_METADATA, or saved without hashes, is refused by every reader.
"""

import contextlib
import hashlib
import json
import pathlib
import re

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from kdjax.errors import CheckpointError, CorruptCheckpointError  # noqa: F401
from kdjax.phases import MODEL_ORDER

_STEP_NAME = re.compile(r"^\d+$")


INTEGRITY = "integrity"   # the meta key that holds the hashes written at save


def _leaf_name(path) -> str:
  """A tree path as "params/conv1/kernel" (dict keys, sequence indices, attribute names)."""
  parts = []
  for key in path:
    for attribute in ("key", "idx", "name"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
  return "/".join(parts)


def array_sha256(array) -> str:
  """sha256 of an array's dtype, shape and bytes (C order): equal digests mean equal arrays."""
  array = np.ascontiguousarray(np.asarray(array))
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  digest.update(array.reshape(-1).view(np.uint8))
  return digest.hexdigest()


def content_sha256(tree) -> dict[str, str]:
  """{path in the tree: array_sha256} for every array of `tree`."""
  return {_leaf_name(path): array_sha256(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def meta_sha256(meta: dict) -> str:
  """sha256 of the meta as JSON with sorted keys (the integrity entry left out)."""
  body = {key: value for key, value in meta.items() if key != INTEGRITY}
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify(where: pathlib.Path, tree: dict, meta: dict) -> dict:
  """The meta without its integrity entry, once `tree` and the meta match the hashes written at save;
  CorruptCheckpointError naming `where` and the first array that differs otherwise."""
  integrity = meta.get(INTEGRITY)
  if not isinstance(integrity, dict) or not isinstance(integrity.get("arrays"), dict):
    raise CheckpointError(f"{where}: holds no content hashes (saved before kdjax checksummed its checkpoints), "
                          f"so it cannot be verified; train it again in a new workdir")
  if meta_sha256(meta) != integrity.get("meta_sha256"):
    raise CorruptCheckpointError(f"{where}: corrupt: its meta does not match the sha256 written at save")
  saved, restored = integrity["arrays"], content_sha256(tree)
  if set(saved) != set(restored):
    missing = sorted(set(saved) ^ set(restored))
    raise CorruptCheckpointError(f"{where}: corrupt: the arrays read are not those saved ({missing[0]}"
                                 f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''})")
  differing = [name for name in saved if saved[name] != restored[name]]
  if differing:
    more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
    raise CorruptCheckpointError(f"{where}: corrupt: array {differing[0]}{more} does not match the sha256 "
                                 f"written at save")
  return {key: value for key, value in meta.items() if key != INTEGRITY}


def _brief(error: BaseException) -> str:
  """An exception as one short line (Orbax and TensorStore messages run over many lines)."""
  text = " ".join(str(error).split())
  if len(text) > 240:
    text = text[:237] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def state_tree(state) -> dict:
  """A TrainState (or any flax struct) as a plain nested dict without None fields: what Orbax stores."""
  tree = flax.serialization.to_state_dict(state)
  return {key: value for key, value in tree.items() if value is not None}


def state_from_tree(template, tree: dict):
  """The inverse of `state_tree`: `template`'s struct (a TrainState) filled from a restored tree."""
  full = flax.serialization.to_state_dict(template)
  restored = {key: (tree[key] if value is not None else None) for key, value in full.items()}
  return flax.serialization.from_state_dict(template, restored)


def saved_epochs(directory: pathlib.Path) -> list[int]:
  """The epochs saved in a model's folder (Orbax's steps), read from its entries (its tmp folders are not
  steps)."""
  if not directory.is_dir():
    return []
  return sorted(int(child.name) for child in directory.iterdir()
                if child.is_dir() and _STEP_NAME.match(child.name))


def _on_one_device(state_dir: pathlib.Path):
  """The saved tree's shapes and dtypes on this process's first device: a checkpoint saved over several devices
  or hosts (kdjax/training/mesh.py: replicated) reads back anywhere, e.g. in `kdjax.cli.inspection` on a laptop."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  saved = ocp.StandardCheckpointHandler().metadata(state_dir)
  return jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), saved)


class ModelCheckpoints:
  """The checkpoints of one model: one step per saved epoch, the last `keep` kept.

  read_only=True opens an existing folder for reading without creating or cleaning anything (inspection,
  a reused teacher); it raises CheckpointError when the folder is missing or holds no step.
  """

  def __init__(self, directory: pathlib.Path, keep: int | None = None, *, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    if read_only:
      if not self.directory.exists():
        raise CheckpointError(f"{self.directory}: no such checkpoint folder")
      if not self.directory.is_dir():
        raise CheckpointError(f"{self.directory}: not a folder, so not an Orbax checkpoint")
      if not saved_epochs(self.directory):
        raise CheckpointError(f"{self.directory}: not an Orbax checkpoint folder (no saved step in it)")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as error:  # noqa: BLE001  (Orbax raises many kinds; the user needs the path)
      raise CheckpointError(f"{self.directory}: cannot open checkpoints ({_brief(error)})") from None

  def save(self, epoch: int, tree: dict, meta: dict) -> None:
    """Saves `epoch` atomically, with the hashes `restore` verifies; on failure (disk full, unwritable) the
    earlier steps are left intact."""
    meta = {key: value for key, value in meta.items() if key != INTEGRITY}
    meta[INTEGRITY] = {"arrays": content_sha256(tree), "meta_sha256": meta_sha256(meta),
                       "rule": "sha256(dtype.str + str(shape) + C-order bytes) per array; sha256 of the "
                               "meta as sorted-key JSON, this entry left out"}
    try:
      self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
      self.manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001
      raise CheckpointError(f"cannot save {self.directory / str(epoch)} ({_brief(error)}); the earlier "
                            f"checkpoints in {self.directory} are intact") from None

  def epochs(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _checked_epoch(self, epoch: int | None) -> int:
    saved = self.epochs()
    if not saved:
      raise CheckpointError(f"{self.directory}: not an Orbax checkpoint folder (no saved step in it)")
    if epoch is None:
      return saved[-1]
    if epoch not in saved:
      raise CheckpointError(f"{self.directory}: no step {epoch}; saved steps: "
                            f"{', '.join(map(str, saved))}")
    return epoch

  def restore(self, epoch: int | None = None, target: dict | None = None) -> tuple[dict, dict, int]:
    """(state tree, meta, epoch read) of `epoch` (default: the latest), verified against the hashes written
    at save (the meta is returned without them); `target` gives the structure and dtypes."""
    epoch = self._checked_epoch(epoch)
    where = self.directory / str(epoch)
    if not (where / "state" / "_METADATA").is_file():
      raise CorruptCheckpointError(f"{where}: incomplete: state/_METADATA (Orbax's description of the saved "
                                   f"tree) is missing")
    try:
      state_args = ocp.args.StandardRestore(
          jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target) if target is not None
          else _on_one_device(where / "state"))
      restored = self.manager.restore(epoch, args=ocp.args.Composite(state=state_args,
                                                                     meta=ocp.args.JsonRestore()))
      state, meta = restored["state"], restored["meta"]
    except Exception as error:  # noqa: BLE001
      with contextlib.suppress(Exception):  # the read's error is the one to report
        self.manager.close()
      raise CorruptCheckpointError(f"{where}: cannot restore: truncated, not an Orbax checkpoint, or saved "
                                   f"by another config ({_brief(error)})") from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
      raise CheckpointError(f"{where}: not a kdjax checkpoint (no state/meta items)")
    return state, verify(where, state, meta), epoch

  def delete_after(self, epoch: int) -> None:
    """Deletes the steps after `epoch` (a resumed phase saves them again)."""
    for step in self.epochs():
      if step > epoch:
        try:
          self.manager.delete(step)
        except Exception as error:  # noqa: BLE001
          raise CheckpointError(f"cannot delete {self.directory / str(step)} ({_brief(error)})") from None

  def close(self) -> None:
    """Closes the manager; an error it held back from a save (a full disk) is raised naming the folder."""
    try:
      self.manager.close()
    except Exception as error:  # noqa: BLE001
      raise CheckpointError(f"{self.directory}: cannot finish writing checkpoints ({_brief(error)})") from None


def _what_is_wrong(where: pathlib.Path, error: CheckpointError) -> str:
  """A checkpoint error's message less the path `where` it starts with and Orbax's detail in parentheses:
  "corrupt: array params/fc/kernel does not match ...", "cannot restore: truncated, not an Orbax checkpoint, ..."."""
  text = str(error).removeprefix(f"{where}: ")
  return text.split(" (", 1)[0] if text.startswith("cannot restore") else text


def none_intact(folder: pathlib.Path, failures: list[tuple[int, CheckpointError]],
                way_out: str) -> CorruptCheckpointError:
  """The one line for a model folder none of whose saves can be read, `failures` the (epoch, error) of each, the
  latest first: the latest save's error in full, then each earlier one (its step, what is wrong with it), then
  `way_out` (what the user can do about it)."""
  folder = pathlib.Path(folder).absolute()
  latest = failures[0][1]
  if len(failures) == 1:
    return CorruptCheckpointError(f"{latest}; it is the only save in {folder}; {way_out}")
  earlier = "; ".join(f"step {epoch}: {_what_is_wrong(folder / str(epoch), error)}"
                      for epoch, error in failures[1:])
  return CorruptCheckpointError(f"{latest}; every earlier save in {folder} is unusable too ({earlier}); {way_out}")


def model_folders(checkpoints_dir: pathlib.Path) -> list[pathlib.Path]:
  """The model folders of a run's checkpoints/ in MODEL_ORDER, then any others sorted."""
  if not checkpoints_dir.is_dir():
    return []
  folders = {child.name: child for child in checkpoints_dir.iterdir() if child.is_dir()}
  ordered = [folders.pop(name) for name in MODEL_ORDER if name in folders]
  return ordered + [folders[name] for name in sorted(folders)]


def resolve(path, model: str) -> tuple[pathlib.Path, int | None]:
  """(model folder, step or None = latest) for a workdir, a model's checkpoint folder, or one step's folder.

  WORKDIR -> WORKDIR/checkpoints/<model>; a folder holding steps -> itself; `<folder>/<step>` -> that step.
  """
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"{path}: no such file or directory")
  if (path / "checkpoints").is_dir():
    folder = path / "checkpoints" / model
    if not folder.is_dir():
      raise CheckpointError(f"{path}: a workdir without a {model} checkpoint (no {folder})")
    return folder, None
  if saved_epochs(path):
    return path, None
  if _STEP_NAME.match(path.name) and path.is_dir() and int(path.name) in saved_epochs(path.parent):
    return path.parent, int(path.name)
  raise CheckpointError(f"{path}: neither a workdir with checkpoints/{model} nor an Orbax checkpoint folder")
