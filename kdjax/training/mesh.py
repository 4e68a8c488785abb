"""Data parallelism on JAX's own engine: one `jax.sharding.Mesh` with a `data` axis over the (global) devices.

With D data-parallel devices (`data_parallel(num_devices)`, the study's config.mesh.num_devices; 0 = all that
jax.devices() lists, on every host):
  batch rows          sharded along `data`: device d holds rows [d*B/D, (d+1)*B/D) of each global batch of B
  params, optimizer state, the (EMA) teacher, the student-weights EMA, the step counter: replicated
  the step           the same jitted function as on one device; XLA (GSPMD) inserts the all-reduce of the
                     gradient, so grad = (1/n) * sum over the n real rows of the global batch, as on one device
A short last batch (data.drop_remainder False, as PyTorch's DataLoader) is padded to B with copies of its first
row whose mask is 0, and the step's losses become masked means, sum_i m_i * l_i / sum_i m_i: the single-device numbers up
to float32 reduction order.

With D == 1 `DataParallel.mesh` is None and nothing here is used: the single-device program is the one kdjax
compiled before this module existed (bit-identical results, the same speed).

The host feeds each device its own rows (`jax.make_array_from_callback`: a process gathers only the rows of its
own devices), the data set stays in host memory; evaluation is sharded the same way.

Several hosts: `initialize` calls `jax.distributed.initialize` (the study passes config.distributed's fields)
before any device is touched; jax.devices() then lists every host's devices and the mesh spans them all.
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kdjax.errors import ConfigError

AXIS = "data"


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """jax.distributed.initialize (config distributed.*): coordinator_address "host:port" with num_processes and
  process_id, or "auto" for the variables a managed cluster sets (SLURM, Open MPI, Cloud TPU, Kubernetes, ...)
  which JAX reads itself; "" (the default) = one process. Idempotent."""
  if not coordinator_address or jax.distributed.is_initialized():
    return
  if coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)


def is_writer() -> bool:
  """Process 0 writes metrics.jsonl, TensorBoard and the report; every process takes part in checkpoints."""
  return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """The data-parallel layout of a run: `mesh` over `size` devices, None when size == 1."""

  mesh: Mesh | None = None

  @property
  def size(self) -> int:
    return 1 if self.mesh is None else self.mesh.devices.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def rows(self) -> NamedSharding:
    """Leading axis split along `data`, the other axes whole."""
    return NamedSharding(self.mesh, PartitionSpec(AXIS))

  def replicate(self, tree):
    """Every leaf (a host array, or a fully replicated/addressable jax.Array) as one copy per device; leaves
    replicated already are kept as they are."""
    if self.mesh is None:
      return tree

    def put(leaf):
      if leaf is None or (isinstance(leaf, jax.Array) and leaf.sharding == self.replicated):
        return leaf
      value = np.asarray(leaf)
      return jax.make_array_from_callback(value.shape, self.replicated, lambda index: value[index])
    return jax.tree_util.tree_map(put, tree)

  def put_rows(self, array: np.ndarray, rows: np.ndarray | None = None) -> jax.Array:
    """array[rows] (all rows when None) sharded along `data`; each process gathers only its devices' rows."""
    count = len(array) if rows is None else len(rows)
    shape = (count, *array.shape[1:])

    def local(index):
      part = index[0]
      return np.asarray(array[part] if rows is None else array[rows[part]])
    return jax.make_array_from_callback(shape, self.rows, local)

  def batch(self, arrays: dict, indices: np.ndarray, batch_size: int) -> dict:
    """One global batch of `batch_size` rows of each host array at `indices`, padded with copies of the first
    row (mask 0) when `indices` is a short last batch; "mask" float32 [B] is 1 on the real rows."""
    count = len(indices)
    padded = (np.concatenate([indices, np.full(batch_size - count, indices[0], indices.dtype)])
              if count < batch_size else indices)
    batch = {name: self.put_rows(array, padded) for name, array in arrays.items()}
    mask = (np.arange(batch_size) < count).astype(np.float32)
    batch["mask"] = self.put_rows(mask)
    # Padding rows are real images (finite logits): the mask alone removes them from every loss and metric.
    return batch


def data_parallel(num_devices: int, batch_size: int, eval_batch_size: int) -> DataParallel:
  """The run's layout over `num_devices` devices (config mesh.num_devices; 0 = all); ConfigError naming the
  config field when the devices or batch_size / eval_batch_size do not fit."""
  devices = jax.devices()
  wanted = num_devices or len(devices)
  if wanted > len(devices):
    raise ConfigError(f"mesh.num_devices must be <= the {len(devices)} devices jax sees, got {wanted}")
  if jax.process_count() > 1 and wanted != len(devices):
    raise ConfigError(f"mesh.num_devices must be 0 or all {len(devices)} devices of the {jax.process_count()} "
                      f"processes, got {wanted}")
  for field, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if size % wanted:
      raise ConfigError(f"{field} must be divisible by the {wanted} data-parallel devices "
                        f"(mesh.num_devices), got {size}")
  if wanted == 1:
    return DataParallel()
  return DataParallel(Mesh(np.asarray(devices[:wanted]), (AXIS,)))
