"""Turns a PhaseRun (both frameworks' results) into table rows, decided by parity.tolerances for the run's dtype.

Δ is the largest |kdjax - PyTorch| (over steps, tensors, logits). For a float32 run two measures of rounding:

  rounding      |kdjax32 - kdjax64| + |PyTorch32 - PyTorch64|, each framework's own float32 error on this run,
                measured against its float64 run (same start, teacher and batches; run.reference). Where the
                frameworks agree in float64, Δ <= rounding + Δ64 by the triangle inequality: a bound, not a model.
  mirror floor  max(|kdjax - kdjax mirrored|, |PyTorch - PyTorch mirrored|) (parity/mirror.py): what another
                summation order at every conv does, a model of per-op rounding that needs no float64 run;
                reported only (it under-models: parity/tolerances.py).
"""

import dataclasses

import numpy as np

from parity import harness
from parity import tolerances


@dataclasses.dataclass
class Row:
  model: str
  steps: int
  dtype: str
  logits_init: float | None     # max |Δ logits|, same initial weights (phase model only)
  loss_abs: float | None        # max over steps of |Δ loss|
  loss_rel: float | None        # max over steps of |Δ loss| / |loss|
  params_abs: float             # max |Δ param| after the steps
  params_moved: float           # max |param_N - param_0| (JAX): the scale of PARAM_RTOL
  logits_final: float           # max |Δ logits| on validation after the steps
  correct_jax: int
  correct_torch: int
  total: int
  ambiguous: int                # examples whose top-1 margin <= 2 * logits_final: the only ones that can flip
  failures: list
  loss_steps_decided: int | None = None   # float32: the first steps whose loss was decided (the rest reported)
  rounding_loss: float | None = None      # float32 against float64 (None without run.reference), max over steps
  rounding_params: float | None = None
  rounding_logits_final: float | None = None
  mirror_loss: float | None = None        # the mirror floor (None without mirrored runs), max over steps
  mirror_params: float | None = None
  mirror_logits_final: float | None = None

  @property
  def ok(self) -> bool:
    return not self.failures

  @property
  def params_rel(self) -> float:
    """params Δ as a fraction of how far training moved them."""
    return self.params_abs / self.params_moved if self.params_moved else float("inf")


def top1_margin(logits: np.ndarray) -> np.ndarray:
  top2 = np.sort(logits, axis=-1)[:, -2:]
  return top2[:, 1] - top2[:, 0]


def _mirror(run: harness.PhaseRun, quantity):
  """max over the two frameworks of |quantity(side) - quantity(side mirrored)|; None without mirrored runs."""
  if not run.has_floors:
    return None
  return np.maximum(quantity(run.jax, run.jax_mirror), quantity(run.torch, run.torch_mirror))


def _rounding(run: harness.PhaseRun, quantity):
  """|quantity(kdjax32) - quantity(kdjax64)| + the same for PyTorch; None without a float64 reference."""
  if run.reference is None:
    return None
  return quantity(run.jax, run.reference.jax) + quantity(run.torch, run.reference.torch)


def _loss_gaps(side, other) -> np.ndarray:
  return np.abs(side.losses - other.losses)


def _loss_check(tol: tolerances.Tolerances, run: harness.PhaseRun) -> tuple[float, float, int, str | None]:
  """(max |Δ|, max relative |Δ|, number of steps decided, first failure or None).

  float64 decides every step. float32 decides step 1 (same weights) and, when the run has a float64 reference,
  each following step while rounding so far (its running max: it only grows) stays below bound / ROUNDING_MARGIN.
  The mirror floor never decides: it under-models rounding (parity/tolerances.py).
  """
  jax_losses, torch_losses = run.jax.losses, run.torch.losses
  delta = np.abs(jax_losses - torch_losses)
  rel = delta / np.maximum(np.abs(torch_losses), 1e-30)
  bound = tol.loss_atol + tol.loss_rtol * np.abs(torch_losses)
  if tol.decides_trajectory:
    decided = len(delta)
  else:
    rounding = _rounding(run, _loss_gaps)
    if rounding is not None:
      quiet = np.maximum.accumulate(rounding) <= bound / tol.rounding_margin
    else:
      quiet = np.zeros(len(delta), bool)
    quiet[0] = True
    decided = len(quiet) if quiet.all() else int(np.argmin(quiet))
  bad = np.flatnonzero(delta[:decided] > bound[:decided])
  failure = None
  if bad.size:
    step = int(bad[0]) + 1
    failure = (f"loss at step {step}: jax {jax_losses[step - 1]:.10g} vs torch {torch_losses[step - 1]:.10g} "
               f"(|Δ| {delta[step - 1]:.2e} > {bound[step - 1]:.2e})")
  return float(delta.max()), float(rel.max()), decided, failure


def _precision_failures(tol: tolerances.Tolerances, run: harness.PhaseRun) -> list[str]:
  """float32 with a float64 reference: each framework's own float32 forward and step-1 loss against its float64
  ones, where only a forward's rounding (~1e-7) separates them: a reduced-precision pass (TF32, bf16) on either
  side, even on both at once, fails here."""
  failures = []
  for name, side, reference in (("kdjax", run.jax, run.reference.jax), ("PyTorch", run.torch, run.reference.torch)):
    logits = float(np.max(np.abs(side.initial_logits - reference.initial_logits)))
    if logits > tol.forward_atol:
      failures.append(f"float32 precision: {name}'s forward differs from its float64 forward by {logits:.2e} "
                      f"> {tol.forward_atol:g}")
    loss, loss64 = side.losses[0], reference.losses[0]
    if abs(loss - loss64) > tol.loss_atol + tol.loss_rtol * abs(loss64):
      failures.append(f"float32 precision: {name}'s step-1 loss {loss:.10g} vs {loss64:.10g} in float64")
  return failures


def _max_logits_gap(name):
  return lambda side, other: float(np.max(np.abs(side.val_logits[name] - other.val_logits[name])))


def _params_gap(name):
  return lambda side, other: harness.max_abs_diff(side.params[name], other.params[name])


def _max(value):
  return None if value is None else float(np.max(value))


def rows(run: harness.PhaseRun, labels: np.ndarray) -> list[Row]:
  """One row per model of the phase (labels: the validation labels), decided by the run's dtype's tolerances."""
  tol = tolerances.for_dtype(run.dtype)
  result = []
  steps = len(run.jax.losses)
  for name in run.models:
    failures = []
    logits_init = loss_abs = loss_rel = decided = rounding_loss = mirror_loss = None
    if name == run.phase:
      logits_init = run.initial_logits_delta
      if logits_init > tol.forward_atol:
        failures.append(f"forward on the same weights: max |Δ logits| {logits_init:.2e} > {tol.forward_atol:g}")
      loss_abs, loss_rel, decided, failure = _loss_check(tol, run)
      if failure:
        failures.append(failure)
      if run.reference is not None:
        failures += _precision_failures(tol, run)
      rounding_loss, mirror_loss = _max(_rounding(run, _loss_gaps)), _max(_mirror(run, _loss_gaps))
    params_abs = harness.max_abs_diff(run.jax.params[name], run.torch.params[name])
    moved = harness.max_abs_diff(run.jax.params[name], run.start[name])
    jax_logits, torch_logits = run.jax.val_logits[name], run.torch.val_logits[name]
    logits_final = float(np.max(np.abs(jax_logits - torch_logits)))
    if tol.decides_trajectory:
      bound = tol.param_atol + tol.param_rtol * moved
      if params_abs > bound:
        failures.append(f"params: max |Δ| {params_abs:.2e} > {bound:.2e} ({tol.param_rtol:g} of the "
                        f"{moved:.2e} they moved)")
      bound = tol.forward_atol + tol.logits_rtol * float(np.max(np.abs(torch_logits)))
      if logits_final > bound:
        failures.append(f"validation logits: max |Δ| {logits_final:.2e} > {bound:.2e}")
    correct_jax = int((jax_logits.argmax(-1) == labels).sum())
    correct_torch = int((torch_logits.argmax(-1) == labels).sum())
    # Counts can differ only on these: where the top-1 differs, kdjax's margin is at most twice the logits' Δ. So
    # the accuracy follows from the logits (decided in float64) and is reported, not decided on its own.
    ambiguous = int((top1_margin(jax_logits) <= 2 * logits_final).sum())
    result.append(Row(
        name, steps, run.dtype, logits_init, loss_abs, loss_rel, params_abs, moved, logits_final, correct_jax,
        correct_torch, len(labels), ambiguous, failures, decided, rounding_loss,
        _rounding(run, _params_gap(name)), _rounding(run, _max_logits_gap(name)), mirror_loss,
        _mirror(run, _params_gap(name)), _mirror(run, _max_logits_gap(name))))
  return result


def _num(value: float | None) -> str:
  return "–" if value is None else f"{value:.1e}"


def table(table_rows: list[Row]) -> str:
  """A markdown table of one dtype's rows. float64: every Δ is decided. float32: each Δ beside its "rounding"
  (each framework against its own float64 run, summed: a bound on Δ where float64 agrees) and its "mirror"
  floor (each framework against the mirrored problem); "loss steps decided": the first steps whose loss was held
  to the bound. "within margin": validation examples whose top-1 margin is within twice the logits' Δ, the only
  ones whose top-1 can differ."""
  top1 = lambda row, correct: f"{100.0 * correct / row.total:.2f} % ({correct}/{row.total})"
  ok = lambda row: "yes" if row.ok else "NO"
  if table_rows and table_rows[0].dtype == "float64":
    lines = ["| model | steps | logits Δ, same weights | loss Δ | loss rel. Δ | params Δ | params moved "
             "| params Δ / moved | val logits Δ | val top-1 JAX | val top-1 PyTorch | within margin | ok |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for row in table_rows:
      lines.append(f"| {row.model} | {row.steps} | {_num(row.logits_init)} | {_num(row.loss_abs)} "
                   f"| {_num(row.loss_rel)} | {_num(row.params_abs)} | {_num(row.params_moved)} "
                   f"| {_num(row.params_rel)} | {_num(row.logits_final)} | {top1(row, row.correct_jax)} "
                   f"| {top1(row, row.correct_torch)} | {row.ambiguous} | {ok(row)} |")
    return "\n".join(lines)
  lines = ["| model | steps | logits Δ, same weights | loss Δ | loss rounding | loss mirror | loss steps decided "
           "| params Δ | params rounding | params mirror | params moved | val logits Δ | val logits rounding "
           "| val logits mirror | val top-1 JAX | val top-1 PyTorch | within margin | ok |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
  for row in table_rows:
    decided = "–" if row.loss_steps_decided is None else f"{row.loss_steps_decided}/{row.steps}"
    lines.append(
        f"| {row.model} | {row.steps} | {_num(row.logits_init)} | {_num(row.loss_abs)} | {_num(row.rounding_loss)} "
        f"| {_num(row.mirror_loss)} | {decided} | {_num(row.params_abs)} | {_num(row.rounding_params)} "
        f"| {_num(row.mirror_params)} | {_num(row.params_moved)} | {_num(row.logits_final)} "
        f"| {_num(row.rounding_logits_final)} | {_num(row.mirror_logits_final)} | {top1(row, row.correct_jax)} "
        f"| {top1(row, row.correct_torch)} | {row.ambiguous} | {ok(row)} |")
  return "\n".join(lines)
