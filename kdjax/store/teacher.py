"""A teacher from elsewhere (config teacher.checkpoint): read from disk, and kept as a copy in the run's own
checkpoints. Whether it fits this run's nets and data is checked in study/teacher.py."""

import dataclasses
import pathlib
from typing import Any

from kdjax.store import checkpoints as ckpt_lib
from kdjax.store.rundir import RunDir


@dataclasses.dataclass
class TeacherSource:
  """A teacher read from teacher.checkpoint: its params, meta, and where it came from (for the report)."""

  params: Any
  meta: dict
  provenance: dict
  # {"teacher": {phase, epoch, path, why}} when another conv path trained it than this run's (study/teacher.py)
  conv_saved: dict = dataclasses.field(default_factory=dict)

  @property
  def epoch(self) -> int:
    return self.provenance["epoch"]


def read(path) -> tuple[dict, dict, int, pathlib.Path]:
  """(tree, meta, epoch, model folder) of the teacher's save at `path` (a workdir, a model folder or a step
  folder; the latest save unless a step is named); CheckpointError naming the save when it is not a teacher's
  (a student's checkpoint) or holds no params. Whether it fits this run is study/teacher.py's check."""
  folder, epoch = ckpt_lib.resolve(path, "teacher")
  tree, meta, epoch = _restore_or_say_the_way_out(folder, epoch)
  epoch = meta.get("epoch", epoch)
  where = folder / str(epoch)
  if meta.get("net", "teacher") != "teacher":
    raise ckpt_lib.CheckpointError(
        f"{where}: a checkpoint of {meta.get('model', folder.name)} (phase {meta.get('phase')}, the "
        f"{meta.get('net')} net), not of a teacher; teacher.checkpoint takes a run's workdir, its "
        f"checkpoints/teacher, or one of its steps")
  if "params" not in tree:
    raise ckpt_lib.CheckpointError(f"{where}: holds no params")
  return tree, meta, epoch, folder


def _restore(folder: pathlib.Path, epoch: int | None):
  reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
  try:
    return reader.restore(epoch)
  finally:
    reader.close()


def _restore_or_say_the_way_out(folder: pathlib.Path, epoch: int | None):
  """(tree, meta, epoch) of the teacher's save `epoch` (None: the latest). A corrupt one is not replaced by an
  earlier epoch's teacher (another teacher than the one asked for): the error names every other save and whether
  it is intact, so the user can pass an intact one or retrain the teacher."""
  try:
    return _restore(folder, epoch)
  except ckpt_lib.CorruptCheckpointError as error:
    asked = epoch if epoch is not None else ckpt_lib.saved_epochs(folder)[-1]
    failures, intact = [(asked, error)], []
    for other in reversed(ckpt_lib.saved_epochs(folder)):
      if other == asked:
        continue
      try:
        _restore(folder, other)
        intact.append(other)
      except ckpt_lib.CorruptCheckpointError as other_error:
        failures.append((other, other_error))
    retrain = (f"retrain the teacher (delete {folder} and rerun its run)" if folder.parent.name == "checkpoints"
               else "retrain the teacher")
    if intact:
      raise ckpt_lib.CorruptCheckpointError(
          f"{error}; {folder / str(intact[0])} is intact: pass it as teacher.checkpoint to distill from that "
          f"epoch's teacher, or {retrain}") from None
    raise ckpt_lib.none_intact(folder, failures, f"no save of this teacher is intact: {retrain}, or pass "
                                                 f"another teacher.checkpoint") from None


def keep_teacher_copy(run: RunDir, source: TeacherSource, keep: int) -> None:
  """Saves a reused teacher into this workdir (for inspect and parity.export), unless it is already here."""
  own = run.checkpoints / "teacher"
  if pathlib.Path(source.provenance["checkpoint"]).parent == own.absolute() or \
      source.epoch in ckpt_lib.saved_epochs(own):
    return
  writer = ckpt_lib.ModelCheckpoints(own, keep)
  meta = {key: value for key, value in source.meta.items() if key != "records"}
  writer.save(source.epoch, {"params": source.params}, dict(meta, source=source.provenance))
  writer.close()
