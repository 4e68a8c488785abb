"""Turns a PhaseRun (both frameworks' results) into table rows, decided by parity.tolerances for the run's dtype.

Δ is the largest |kdjax - PyTorch| (over steps, tensors, logits); a floor is the same quantity between each
framework and itself on the mirrored problem (parity/mirror.py), the larger of the two: rounding alone.
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
  loss_steps_decided: int | None = None  # float32: the first steps whose loss was decided (the rest reported)
  floor_logits_init: float | None = None  # the floors (None without mirrored runs)
  floor_loss: float | None = None         # max over steps
  floor_params: float | None = None
  floor_logits_final: float | None = None

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


def _floor(run: harness.PhaseRun, quantity) -> float | np.ndarray | None:
  """max over the two frameworks of |quantity(side) - quantity(side mirrored)|; None without mirrored runs."""
  if not run.has_floors:
    return None
  return np.maximum(quantity(run.jax, run.jax_mirror), quantity(run.torch, run.torch_mirror))


def _loss_check(tol: tolerances.Tolerances, run: harness.PhaseRun) -> tuple[float, float, int, str | None]:
  """(max |Δ|, max relative |Δ|, number of steps decided, first failure or None).

  float64 decides every step. float32 decides step 1 (same weights) and each following step while the floor so
  far (its running max: rounding only grows) stays below bound / FLOOR_MARGIN; without a floor, step 1 only.
  """
  jax_losses, torch_losses = run.jax.losses, run.torch.losses
  delta = np.abs(jax_losses - torch_losses)
  rel = delta / np.maximum(np.abs(torch_losses), 1e-30)
  bound = tol.loss_atol + tol.loss_rtol * np.abs(torch_losses)
  if tol.decides_trajectory:
    decided = len(delta)
  else:
    floor = _floor(run, lambda side, mirrored: np.abs(side.losses - mirrored.losses))
    if floor is None:
      decided = 1
    else:
      quiet = np.maximum.accumulate(floor) <= bound / tol.floor_margin
      quiet[0] = True
      decided = int(np.argmin(quiet)) if not quiet.all() else len(quiet)
  bad = np.flatnonzero(delta[:decided] > bound[:decided])
  failure = None
  if bad.size:
    step = int(bad[0]) + 1
    failure = (f"loss at step {step}: jax {jax_losses[step - 1]:.10g} vs torch {torch_losses[step - 1]:.10g} "
               f"(|Δ| {delta[step - 1]:.2e} > {bound[step - 1]:.2e})")
  return float(delta.max()), float(rel.max()), decided, failure


def rows(run: harness.PhaseRun, labels: np.ndarray) -> list[Row]:
  """One row per model of the phase (labels: the validation labels), decided by the run's dtype's tolerances."""
  tol = tolerances.for_dtype(run.dtype)
  result = []
  steps = len(run.jax.losses)
  for name in run.models:
    failures = []
    logits_init = loss_abs = loss_rel = decided = None
    floor_logits_init = floor_loss = None
    if name == run.phase:
      logits_init = run.initial_logits_delta
      floor_logits_init = _floor(run, lambda side, mirrored: float(
          np.max(np.abs(side.initial_logits - mirrored.initial_logits))))
      if logits_init > tol.forward_atol:
        failures.append(f"forward on the same weights: max |Δ logits| {logits_init:.2e} > {tol.forward_atol:g}")
      loss_abs, loss_rel, decided, failure = _loss_check(tol, run)
      if failure:
        failures.append(failure)
      if run.has_floors:
        floor_loss = float(np.max(_floor(run, lambda side, mirrored: np.abs(side.losses - mirrored.losses))))
    params_abs = harness.max_abs_diff(run.jax.params[name], run.torch.params[name])
    moved = harness.max_abs_diff(run.jax.params[name], run.start[name])
    floor_params = _floor(run, lambda side, mirrored: harness.max_abs_diff(side.params[name],
                                                                            mirrored.params[name]))
    jax_logits, torch_logits = run.jax.val_logits[name], run.torch.val_logits[name]
    logits_final = float(np.max(np.abs(jax_logits - torch_logits)))
    floor_logits_final = _floor(run, lambda side, mirrored: float(
        np.max(np.abs(side.val_logits[name] - mirrored.val_logits[name]))))
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
    # the accuracy follows from the logits (decided above in float64) and is reported, not decided on its own.
    ambiguous = int((top1_margin(jax_logits) <= 2 * logits_final).sum())
    result.append(Row(name, steps, run.dtype, logits_init, loss_abs, loss_rel, params_abs, moved, logits_final,
                      correct_jax, correct_torch, len(labels), ambiguous, failures, decided, floor_logits_init,
                      floor_loss, floor_params, floor_logits_final))
  return result


def _num(value: float | None) -> str:
  return "–" if value is None else f"{value:.1e}"


def _with_floor(value: float | None, floor: float | None) -> str:
  if value is None or floor is None:
    return _num(value)
  return f"{value:.1e} ({floor:.1e})"


def _ratio(value: float, floor: float | None) -> str:
  if floor is None:
    return "–"
  return f"{value / floor:.1f}" if floor > 0 else ("0" if value == 0 else "∞")


def table(table_rows: list[Row]) -> str:
  """A markdown table of one dtype's rows. float64: every Δ is decided. float32: "Δ (floor)", the floor being
  rounding alone (kdjax and PyTorch each against the mirrored problem); "loss steps decided": the first steps
  whose loss was held to the bound; params and validation logits are reported with Δ / floor. "within margin":
  validation examples whose top-1 margin is within twice the logits' Δ, the only ones whose top-1 can differ."""
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
  lines = ["| model | steps | logits Δ, same weights (floor) | loss Δ (floor) | loss rel. Δ | loss steps decided "
           "| params Δ (floor) | params Δ / floor | params moved | val logits Δ (floor) | val logits Δ / floor "
           "| val top-1 JAX | val top-1 PyTorch | within margin | ok |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|"]
  for row in table_rows:
    decided = "–" if row.loss_steps_decided is None else f"{row.loss_steps_decided}/{row.steps}"
    lines.append(
        f"| {row.model} | {row.steps} | {_with_floor(row.logits_init, row.floor_logits_init)} "
        f"| {_with_floor(row.loss_abs, row.floor_loss)} | {_num(row.loss_rel)} | {decided} "
        f"| {_with_floor(row.params_abs, row.floor_params)} | {_ratio(row.params_abs, row.floor_params)} "
        f"| {_num(row.params_moved)} | {_with_floor(row.logits_final, row.floor_logits_final)} "
        f"| {_ratio(row.logits_final, row.floor_logits_final)} | {top1(row, row.correct_jax)} "
        f"| {top1(row, row.correct_torch)} | {row.ambiguous} | {ok(row)} |")
  return "\n".join(lines)
