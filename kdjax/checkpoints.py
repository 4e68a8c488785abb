"""Orbax checkpoints: WORKDIR/checkpoints/<model>/<epoch>/ holds {"state": the model's pytree, "meta": JSON}.

Models: teacher, student_ce, student_kd, student_kd_ema (each the whole TrainState as a dict: params,
opt_state, step, teacher_params = the frozen or EMA-updated teacher, ema_params = the student-weights average)
and teacher_ema (the EMA-updated teacher, {"params"} only). The meta of a save holds the phase, the epoch, the
step, the data-order state, the metrics so far and the run's config (see experiment.Study._save), so a
checkpoint folder copied elsewhere still says what it is.

Saves are Orbax's atomic commits: a step is written into `<epoch>.orbax-checkpoint-tmp-*` and renamed when
complete, so a kill during a save leaves the earlier steps as they were (the half-written folder is removed by
the next writer). Every failure to read or write is a CheckpointError whose one-line message names the path.
"""

import io
import os
import pathlib
import re
import sys
import threading

import flax.serialization
import jax
import orbax.checkpoint as ocp

# The order in which a run's models are listed (inspection, reports); other folders follow, sorted.
MODEL_ORDER = ("teacher", "student_ce", "student_kd", "student_kd_ema", "teacher_ema")
# A phase's student-weights average is reported as "<phase> (EMA weights)" and saved in <phase>'s ema_params.
EMA_WEIGHTS_SUFFIX = " (EMA weights)"
_STEP_NAME = re.compile(r"^\d+$")


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be found, read or written; the message is one line naming the path."""


def _brief(error: BaseException) -> str:
  """An exception as one short line (Orbax and TensorStore messages run over many lines)."""
  text = " ".join(str(error).split())
  if len(text) > 240:
    text = text[:237] + "..."
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _DropClosedLoopTracebacks(io.TextIOBase):
  """sys.stderr, less the tracebacks "RuntimeError: Event loop is closed" that TensorStore prints from its
  own threads when a read finishes after Orbax gave up on a broken checkpoint (its asyncio loop is closed
  by then). They say nothing the one-line CheckpointError does not, and they would bury it."""

  _START = "Traceback (most recent call last):"

  def __init__(self, stream):
    self.stream = stream
    self.pending: dict[int, str] = {}
    self.lock = threading.Lock()

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self.stream.write(text)
    with self.lock:
      ident = threading.get_ident()
      buffered = self.pending.pop(ident, "") + text
      if not buffered.startswith(self._START[:len(buffered)]) or (
          not buffered.startswith(self._START) and "\n" in buffered):
        return self.stream.write(buffered)
      last = buffered.splitlines()[-1] if buffered.endswith("\n") else ""
      if last and not last.startswith((" ", "Traceback")):   # the traceback's final "Kind: message" line
        if last.strip() != "RuntimeError: Event loop is closed":
          self.stream.write(buffered)
        return len(text)
      self.pending[ident] = buffered
      return len(text)

  def flush(self) -> None:
    self.stream.flush()

  def fileno(self) -> int:
    return self.stream.fileno()

  @property
  def encoding(self):
    return self.stream.encoding


def quiet_stderr() -> None:
  """For the command-line entry points: see _DropClosedLoopTracebacks."""
  if not isinstance(sys.stderr, _DropClosedLoopTracebacks):
    sys.stderr = _DropClosedLoopTracebacks(sys.stderr)


def exit_now(code: int) -> None:
  """Ends the process after a one-line error, skipping the interpreter's teardown: after a failed read,
  TensorStore can leave callbacks for Orbax's closed asyncio loop that print tracebacks at exit, which would
  bury the one line. Nothing is left to write when this is called."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said
      pass
  os._exit(code)


def state_tree(state) -> dict:
  """A TrainState (or any flax struct) as a plain nested dict without None fields: what Orbax stores."""
  tree = flax.serialization.to_state_dict(state)
  return {key: value for key, value in tree.items() if value is not None}


def state_from_tree(template, tree: dict):
  """The inverse of `state_tree`: `template`'s struct (a TrainState) filled from a restored tree."""
  full = flax.serialization.to_state_dict(template)
  restored = {key: (tree[key] if value is not None else None) for key, value in full.items()}
  return flax.serialization.from_state_dict(template, restored)


def step_names(directory: pathlib.Path) -> list[int]:
  """The committed steps in a folder, read from its entries (Orbax's tmp folders are not steps)."""
  if not directory.is_dir():
    return []
  return sorted(int(child.name) for child in directory.iterdir()
                if child.is_dir() and _STEP_NAME.match(child.name))


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
      if not step_names(self.directory):
        raise CheckpointError(f"{self.directory}: not an Orbax checkpoint folder (no saved step in it)")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=False)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as error:  # noqa: BLE001  (Orbax raises many kinds; the user needs the path)
      raise CheckpointError(f"{self.directory}: cannot open checkpoints ({_brief(error)})") from None

  def save(self, epoch: int, tree: dict, meta: dict) -> None:
    """Saves `epoch` atomically; on failure (disk full, unwritable) the earlier steps are left intact."""
    try:
      self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
      self.manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001
      raise CheckpointError(f"cannot save {self.directory / str(epoch)} ({_brief(error)}); the earlier "
                            f"checkpoints in {self.directory} are intact") from None

  def epochs(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

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

  def restore(self, epoch: int | None = None, target: dict | None = None) -> tuple[dict, dict]:
    """(state tree, meta) of `epoch` (default: the latest); `target` gives the structure and dtypes."""
    epoch = self._checked_epoch(epoch)
    state_args = (ocp.args.StandardRestore(jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target))
                  if target is not None else ocp.args.StandardRestore())
    try:
      restored = self.manager.restore(epoch, args=ocp.args.Composite(state=state_args,
                                                                     meta=ocp.args.JsonRestore()))
      state, meta = restored["state"], restored["meta"]
    except Exception as error:  # noqa: BLE001
      self.close()
      raise CheckpointError(f"{self.directory / str(epoch)}: cannot restore: truncated, not an Orbax "
                            f"checkpoint, or saved by another config ({_brief(error)})") from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
      raise CheckpointError(f"{self.directory / str(epoch)}: not a kdjax checkpoint (no state/meta items)")
    return state, meta

  def restore_meta(self, epoch: int | None = None) -> dict:
    """The meta of `epoch` (default: the latest) alone, without reading the arrays."""
    epoch = self._checked_epoch(epoch)
    try:
      meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as error:  # noqa: BLE001
      raise CheckpointError(f"{self.directory / str(epoch)}: cannot read its meta ({_brief(error)})") from None
    if not isinstance(meta, dict):
      raise CheckpointError(f"{self.directory / str(epoch)}: not a kdjax checkpoint (no meta item)")
    return meta

  def delete_after(self, epoch: int) -> None:
    """Deletes the steps after `epoch` (a resumed phase saves them again)."""
    for step in self.epochs():
      if step > epoch:
        self.manager.delete(step)

  def close(self) -> None:
    self.manager.close()


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
  if step_names(path):
    return path, None
  if _STEP_NAME.match(path.name) and path.is_dir() and int(path.name) in step_names(path.parent):
    return path.parent, int(path.name)
  raise CheckpointError(f"{path}: neither a workdir with checkpoints/{model} nor an Orbax checkpoint folder")
