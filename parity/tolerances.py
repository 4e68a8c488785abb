"""The parity tolerances, in one place (below, the Tolerances fields in capitals), with why (docs/parity.md has the measurements). FLOAT32 is what a check
uses by default; FLOAT64 (parity.check --dtype=float64, both frameworks in double precision) is ~1e4 tighter:
there rounding is ~1e-16 and only a semantic difference could be seen.

Both frameworks compute in float32 (JAX with jax_default_matmul_precision="highest", PyTorch without TF32), but
with different convolution and reduction algorithms (XLA vs oneDNN/ATen), so results differ in summation order:
~1e-7 relative per op where nothing cancels.

FORWARD_ATOL   logits of the same weights on the same inputs: 1e-5 (the issue's bound; measured ~1e-7).
LOSS_RTOL      per-step training loss, relative: 1e-4 (the issue's bound). Step 1 differs only by the forward's
               rounding (~1e-7); later steps also carry the parameter drift below. The KD loss is a KL of two nearby
               distributions, a difference of near-equal sums, which loses a few digits (measured ~1e-5).
LOSS_ATOL      a floor for a loss near zero (a student close to its teacher has KL -> 0), where a relative bound
               is meaningless: the KL sums p*log p - p*log q, near-equal terms with ~1e-7 absolute rounding in the
               logs, then scales by T^2 (16 at the seed's T = 4): 2e-6.
PARAM_RTOL     final parameters, as a fraction of how far training moved them (max |theta_N - theta_0|): 5e-2.
               SGD moves a parameter by lr * grad, so gradient rounding enters at its own tiny size. Adam divides by
               sqrt(v): a gradient that is mostly cancellation has a large *relative* rounding error, and Adam turns
               it into an O(lr) difference in the step: measured ~3e-3 of the displacement for the 4-conv student
               and up to 2.4e-2 for the 12-conv teacher (16x16, Adam, 20 steps; 2.8e-8 for the same run in
               float64). A real semantic difference (a wrong EMA pairing, a missing T^2, the wrong flatten order,
               another Adam) is O(1) of the displacement.
PARAM_ATOL     a floor for tensors that barely move (an EMA with decay 0.999 over a few steps): 1e-6.
LOGITS_RTOL    validation logits after training, relative to the largest logit: they inherit the parameter drift;
               5e-2 as for the parameters.
NOISE_FACTOR   the seed's teacher (12 activation-free convs, PyTorch's init) is ill-conditioned: its deep
               activations are mostly bias, the input-dependent part is a small difference of large numbers, and
               Adam's normalised steps amplify rounding by ~2x per step. kdjax against *itself*, started one ulp
               away and fed each batch reversed (the "twin"), drifts nearly as far as kdjax against PyTorch
               (measured at 64x64, Adam, 20 steps: loss 3.6e-3, params 7.4e-4; PyTorch: 9.4e-3, 3.2e-3). So a
               value also passes within NOISE_FACTOR = 10 times the twin's difference (for losses, the twin's
               largest gap over the run: the frameworks differ in every conv's rounding, the twin only in its
               start and batch sums, so a chaotic run's early steps run ahead of the twin's own curve). This only
               admits what fp32 does to kdjax itself; in float64 the same teacher run agrees to ~6e-8, which is
               what shows that the two compute the same function. The twin cannot hide a semantic error in the
               forward (FORWARD_ATOL holds alone) or in a well-conditioned phase (its twin gap is ~1e-6).
Accuracy       counts must be identical, except for examples whose top-1 margin is within twice the largest
               logit difference: only those can flip, so they are the only allowed difference (usually 0).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerances:
  forward_atol: float
  loss_rtol: float
  loss_atol: float
  param_rtol: float
  param_atol: float
  logits_rtol: float
  noise_factor: float = 10.0


FLOAT32 = Tolerances(forward_atol=1e-5, loss_rtol=1e-4, loss_atol=2e-6, param_rtol=5e-2, param_atol=1e-6,
                     logits_rtol=5e-2)
# float64: measured at 64x64, Adam, 20 steps: logits 4e-16, losses <= 6e-9 relative, params <= 3e-6 of the
# displacement (the ill-conditioned teacher); bounds ~30x above that.
FLOAT64 = Tolerances(forward_atol=1e-12, loss_rtol=2e-7, loss_atol=1e-12, param_rtol=1e-4, param_atol=1e-12,
                     logits_rtol=1e-4)


def for_dtype(dtype: str) -> Tolerances:
  return {"float32": FLOAT32, "float64": FLOAT64}[dtype]
