"""Orbax checkpoints: WORKDIR/checkpoints/<model>/<epoch>/ holds {"state": the model's pytree,
"meta": JSON (phase, epoch, step, metrics so far)}. Models: teacher, student_ce, student_kd, student_kd_ema,
teacher_ema (the EMA-updated teacher, params only)."""

import pathlib

import flax.serialization
import jax
import orbax.checkpoint as ocp


def state_tree(state) -> dict:
  """A TrainState (or any flax struct) as a plain nested dict without None fields: what Orbax stores."""
  tree = flax.serialization.to_state_dict(state)
  return {key: value for key, value in tree.items() if value is not None}


class ModelCheckpoints:
  """The checkpoints of one model: save every `every_epochs` epochs and at the end, keep the last `keep`."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self.directory = pathlib.Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def save(self, epoch: int, tree: dict, meta: dict) -> None:
    self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, epoch: int | None = None, target: dict | None = None) -> tuple[dict, dict]:
    """(state tree, meta) of `epoch` (default: the latest); `target` gives the structure and dtypes."""
    epoch = self.latest_epoch() if epoch is None else epoch
    state_args = (ocp.args.StandardRestore(jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target))
                  if target is not None else ocp.args.StandardRestore())
    restored = self.manager.restore(epoch, args=ocp.args.Composite(state=state_args,
                                                                   meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self.manager.close()
