"""Turns a PhaseRun (both frameworks' results) into table rows, checked against parity.tolerances."""

import dataclasses

import numpy as np

from parity import harness
from parity import tolerances


@dataclasses.dataclass
class Row:
  model: str
  steps: int
  logits_init: float | None     # max |Δ logits|, same initial weights (phase model only)
  loss_abs: float | None        # max over steps of |Δ loss|
  loss_rel: float | None        # max over steps of |Δ loss| / |loss|
  params_abs: float             # max |Δ param| after the steps
  params_moved: float           # max |param_N - param_0| (JAX): the scale of PARAM_RTOL
  logits_final: float           # max |Δ logits| on validation after the steps
  correct_jax: int
  correct_torch: int
  total: int
  ambiguous: int                # examples whose top-1 margin <= 2 * logits_final (the only ones that may flip)
  failures: list
  twin_loss_abs: float | None = None    # the same quantities between kdjax and its twin: the fp32
  twin_params_abs: float | None = None  # rounding floor (None when the run had no twin)

  @property
  def ok(self) -> bool:
    return not self.failures


def top1_margin(logits: np.ndarray) -> np.ndarray:
  top2 = np.sort(logits, axis=-1)[:, -2:]
  return top2[:, 1] - top2[:, 0]


def _loss_failure(tol, jax_losses, torch_losses, twin_losses=None) -> tuple[float, float, str | None]:
  jax_losses, torch_losses = np.asarray(jax_losses, np.float64), np.asarray(torch_losses, np.float64)
  delta = np.abs(jax_losses - torch_losses)
  rel = delta / np.maximum(np.abs(torch_losses), 1e-30)
  bound = tol.loss_atol + tol.loss_rtol * np.abs(torch_losses)
  if twin_losses is not None:
    # The twin's largest gap over the run: the framework's rounding enters at every step, the twin's only at the
    # start, so early steps of a chaotic run run ahead of the twin's envelope (tolerances.NOISE_FACTOR).
    floor = np.max(np.abs(jax_losses - np.asarray(twin_losses, np.float64)))
    bound = np.maximum(bound, tol.noise_factor * floor)
  bad = np.flatnonzero(delta > bound)
  failure = None
  if bad.size:
    step = int(bad[0]) + 1
    failure = (f"loss at step {step}: jax {jax_losses[step - 1]:.7g} vs torch {torch_losses[step - 1]:.7g} "
               f"(|Δ| {delta[step - 1]:.2e} > {bound[step - 1]:.2e})")
  return float(delta.max()), float(rel.max()), failure


def rows(run: harness.PhaseRun, labels: np.ndarray) -> list[Row]:
  """One row per model of the phase (labels: the validation labels), checked against the run's dtype's bounds."""
  tol = tolerances.for_dtype(run.dtype)
  result = []
  steps = sum(len(losses) for losses in run.jax.step_losses)
  flatten = lambda side: [loss for epoch in side.step_losses for loss in epoch]
  twin = run.twin
  for name in run.models:
    failures = []
    logits_init = loss_abs = loss_rel = twin_loss = twin_params = None
    if name == run.phase:
      logits_init = run.initial_logits_delta
      if logits_init > tol.forward_atol:
        failures.append(f"forward on the same weights: max |Δ logits| {logits_init:.2e} > {tol.forward_atol:g}")
      loss_abs, loss_rel, failure = _loss_failure(tol, flatten(run.jax), flatten(run.torch),
                                                  flatten(twin) if twin else None)
      if twin:
        twin_loss = float(np.max(np.abs(np.subtract(flatten(run.jax), flatten(twin)))))
      if failure:
        failures.append(failure)
    jax_params, torch_params = run.jax.params[name], run.torch.params[name]
    params_abs = harness.max_abs_diff(jax_params, torch_params)
    moved = harness.max_abs_diff(jax_params, run.start[name])
    bound = tol.param_atol + tol.param_rtol * moved
    if twin:
      twin_params = harness.max_abs_diff(jax_params, twin.params[name])
      bound = max(bound, tol.noise_factor * twin_params)
    if params_abs > bound:
      failures.append(f"params: max |Δ| {params_abs:.2e} > {bound:.2e} ({tol.param_rtol:g} of the "
                      f"{moved:.2e} they moved, or {tol.noise_factor:g}x the twin's)")
    jax_logits, torch_logits = run.jax.val_logits[name], run.torch.val_logits[name]
    logits_final = float(np.max(np.abs(jax_logits - torch_logits)))
    scale = float(np.max(np.abs(torch_logits)))
    bound = tol.forward_atol + tol.logits_rtol * scale
    if twin:
      bound = max(bound, tol.noise_factor * float(np.max(np.abs(jax_logits - twin.val_logits[name]))))
    if logits_final > bound:
      failures.append(f"validation logits: max |Δ| {logits_final:.2e} > {bound:.2e}")
    correct_jax = int((jax_logits.argmax(-1) == labels).sum())
    correct_torch = int((torch_logits.argmax(-1) == labels).sum())
    ambiguous = int((top1_margin(jax_logits) <= 2 * logits_final).sum())
    if abs(correct_jax - correct_torch) > ambiguous:
      failures.append(f"accuracy: {correct_jax} vs {correct_torch} correct with only {ambiguous} examples "
                      f"close enough to flip")
    result.append(Row(name, steps, logits_init, loss_abs, loss_rel, params_abs, moved, logits_final,
                      correct_jax, correct_torch, len(labels), ambiguous, failures, twin_loss, twin_params))
  return result


def _num(value: float | None) -> str:
  return "–" if value is None else f"{value:.1e}"


def table(table_rows: list[Row]) -> str:
  """A markdown table of the rows. Δ = max absolute JAX - PyTorch difference (over steps, tensors, logits);
  "twin" = the same between kdjax and kdjax one ulp away, batches reversed (the fp32 rounding floor)."""
  lines = [
      "| model | steps | logits Δ, same weights | loss Δ | loss rel. Δ | loss Δ, twin | params Δ "
      "| params Δ, twin | params moved | val logits Δ | val top-1 JAX | val top-1 PyTorch | ok |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
  ]
  for row in table_rows:
    top1 = lambda correct: f"{100.0 * correct / row.total:.2f} % ({correct}/{row.total})"
    lines.append(
        f"| {row.model} | {row.steps} | {_num(row.logits_init)} | {_num(row.loss_abs)} | {_num(row.loss_rel)} "
        f"| {_num(row.twin_loss_abs)} | {_num(row.params_abs)} | {_num(row.twin_params_abs)} "
        f"| {_num(row.params_moved)} | {_num(row.logits_final)} "
        f"| {top1(row.correct_jax)} | {top1(row.correct_torch)} | {'yes' if row.ok else 'NO'} |")
  return "\n".join(lines)
