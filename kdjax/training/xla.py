"""XLA compiler options for kdjax's own jitted functions, scoped to each compile (never process-wide XLA_FLAGS).

The one option kdjax sets is XLA:CPU's YNNPACK library-fusion set. In jaxlib 0.10.2 its default is
{INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION} (read off the compiled HLO: setting exactly these three
compiles the same `__ynn_fusion`s as setting nothing). INDIVIDUAL_CONVOLUTION sends the backward pass's
weight-gradient convolutions (all 12 of the teacher step's at batch 128, 64x64; fewer at small sizes; never a
forward or input-gradient convolution) to YNNPACK. CPU_OPTIONS is the default set without it: forward logits are bit-identical with and without it; weight gradients
are summed in another order (training moves at the fp32-rounding level), and the teacher's step is faster
(config speed.xla_cpu_options; measured: docs/log/2026-11-28-speed-xla-path.md). One set per compile.

`jax.jit(..., compiler_options={name: value})` passes `value` through XLA's flag parser (as XLA_FLAGS would,
but for this compile only); an option or enum value this jaxlib does not know fails at compile time, so
`compiler_options` first compiles a trivial function with the options once per process and drops them, with
a warning, when they are rejected. The option is XLA:CPU's: other backends get none.
"""

import collections
import functools
import re
import warnings
from typing import Callable

import jax
import numpy as np

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS: dict[str, str] = {
    YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


@functools.lru_cache(maxsize=None)
def _accepted(options: tuple[tuple[str, str], ...], backend: str) -> bool:
  """Does this jaxlib's `backend` compile with `options`? (One tiny compile, once per process.)"""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options), backend=backend).lower(
        np.float32(0)).compile()
  except Exception as error:  # XlaRuntimeError (unknown option or value); its type moves between jaxlibs
    warnings.warn(f"kdjax.training.xla: this jaxlib rejects {dict(options)} ({str(error).splitlines()[0]}); "
                  f"compiling with XLA's defaults instead", RuntimeWarning, stacklevel=3)
    return False
  return True


def compiler_options(enabled: bool = True, backend: str | None = None) -> dict[str, str] | None:
  """The per-compile options for `jax.jit(..., compiler_options=...)`: CPU_OPTIONS on a CPU backend when
  `enabled` (config speed.xla_cpu_options) and accepted by this jaxlib, else None (XLA's defaults).

  backend: the backend the function will run on; None = jax.default_backend().
  """
  backend = backend or jax.default_backend()
  if not enabled or backend != "cpu":
    return None
  if not _accepted(tuple(sorted(CPU_OPTIONS.items())), backend):
    return None
  return dict(CPU_OPTIONS)


def jit(fn: Callable, xla_cpu_options: bool = True, **jit_kwargs) -> Callable:
  """`jax.jit(fn, **jit_kwargs)` with `compiler_options(xla_cpu_options)`, e.g.

      step_fn = kdjax.training.xla.jit(step, config.speed.xla_cpu_options, donate_argnums=0)
  """
  options = compiler_options(xla_cpu_options, jit_kwargs.get("backend"))
  return jax.jit(fn, compiler_options=options, **jit_kwargs)


_LIBRARY_FUSION = re.compile(r'fusion\(.*calls=%?([\w.\-]+).*"kind":"(__\w+_fusion)"')
_COMPUTATION = re.compile(r"^%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", re.M | re.S)
_MAIN_OPS = ("convolution", "dot", "reduce")


def library_fusions(hlo_text: str) -> collections.Counter:
  """{(library, op): count} of a compiled program's library fusions (`compiled.as_text()`), e.g.
  {("__ynn_fusion", "convolution"): 12}; op is the fused computation's convolution, dot or reduce, else
  "elementwise". Shows what a compiler option changed."""
  bodies = {match.group(1): match.group(2) for match in _COMPUTATION.finditer(hlo_text)}
  counts = collections.Counter()
  for match in _LIBRARY_FUSION.finditer(hlo_text):
    body = bodies.get(match.group(1), "")
    op = next((name for name in _MAIN_OPS if re.search(rf"\s{name}\(", body)), "elementwise")
    counts[(match.group(2), op)] += 1
  return counts
