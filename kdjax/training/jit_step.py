"""The one place a training step is jitted: the study (study/builder.Setup.train_step), the parity harness and the
benchmark all compile their `(state, batch) -> (state, metrics)` here, so each runs the program the study runs.

    step_fn = jit_step(step, xla_cpu_options=True, parallel=None)

  * compiled with XLA:CPU's per-compile options when `xla_cpu_options` (config speed.xla_cpu_options;
    kdjax/training/xla.py);
  * the state (argument 0) donated: its buffers are reused for the new state. Safe because every state a caller
    passes is its own (train.create_state copies the parameters it is given, and a caller keeps only the state the
    step returns); the batch is never donated (the caller's split is gathered into it again next step);
  * over several devices (`parallel` a kdjax.training.mesh.DataParallel with a mesh) the state and the metrics come
    back replicated.
"""

from typing import Callable

from kdjax.training import mesh as mesh_lib
from kdjax.training import xla


def jit_step(step: Callable, xla_cpu_options: bool = True, parallel: mesh_lib.DataParallel | None = None,
             donate: bool = True) -> Callable:
  """`step` jitted as the study runs it (module docstring); donate=False keeps the state passed in readable."""
  kwargs = {"donate_argnums": 0} if donate else {}
  if parallel is not None and parallel.mesh is not None:
    kwargs["out_shardings"] = parallel.replicated
  return xla.jit(step, xla_cpu_options, **kwargs)
