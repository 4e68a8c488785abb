"""The parity tolerances, in one place, with why (docs/parity.md has the measurements, on more than one CPU).

Parity is decided in float64 and measured in float32.

FLOAT64 decides semantics. Both frameworks compute in double precision from the same weights on bit-identical
inputs (data.normalize is a table lookup, parity/harness.py model_inputs), so they differ only by float64 rounding,
~1e-16 relative per op: measured <= 3.1e-15 (params; <= 2.9e-12 of their displacement) and <= 1.8e-14 (losses)
at 64x64 from 1 to 100 Adam steps, every model, the ill-conditioned teacher included. Every quantity is checked,
with bounds 1e2 - 1e4 above what was measured:

  FORWARD_ATOL   logits of the same weights: 1e-12 absolute (logits are O(1..10); measured <= 5.0e-16).
  LOSS_RTOL      every step's loss, relative: 1e-11; LOSS_ATOL 1e-13 for a KD loss near 0 (a KL of near-equal
                 terms, T^2-scaled).
  PARAM_RTOL     final parameters, as a fraction of how far training moved them (max |theta_N - theta_0|): 1e-9;
                 PARAM_ATOL 1e-14 for tensors that barely move.
  LOGITS_RTOL    validation logits after training, relative to the largest logit: 1e-10.

A semantic error is orders of magnitude above these: a missing T^2 changes the KD loss 16x at step 1; a wrong
flatten order or EMA pairing changes logits or the teacher by O(1) of what they move; a wrong Adam bias
correction changes the first steps by O(lr); an EMA at the wrong point in the step moves the teacher by
(1 - alpha) * lr per step (~1e-6, against bounds ~1e-11). tests/parity/test_semantics.py injects each and sees
the float64 check fail.

FLOAT32 is reported beside the rounding measured in the same run, and decided only where that is robust.
Two frameworks round differently at every op (other conv and reduction algorithms, elementwise formulas contracted
into FMAs or not, ~1e-7 relative each), and training amplifies it: the original's activation-free teacher is
ill-conditioned (its deep activations are mostly bias, the input-dependent part a small difference of large
numbers) and Adam divides by sqrt(v), so a gradient that is mostly cancellation gives an O(lr) step difference.
How far that goes depends on the CPU or GPU, its kernels and thread count: after 5 steps kdjax's and PyTorch's
teachers differed by 1.8e-3 on an Intel Sapphire Rapids CPU and by 3.0e-4 on an AMD EPYC. No constant holds
everywhere, so the check measures rounding in the same run, two ways:

  rounding  = |kdjax32 - kdjax64| + |PyTorch32 - PyTorch64|           per quantity (parity.check --dtype=both)
              each framework's own float32 error on this run, against its float64 run from the same weights,
              teacher and batches. Where float64 agrees (to ~1e-13), |kdjax32 - PyTorch32| <= rounding by the
              triangle inequality: a bound, not a model, on any machine.
  mirror    = max(|kdjax - kdjax mirrored|, |PyTorch - PyTorch mirrored|)
              each framework against itself on the mirrored problem (parity/mirror.py: images, kernels and fc
              rows transposed across the image diagonal, batches reversed: the same function, every conv summing
              its taps in another order). A model of per-op rounding, without float64. It does not model the
              elementwise formulas (XLA contracts a*x + b*y into FMAs, PyTorch's Adam orders its update
              differently) nor whatever else makes two frameworks' errors differ more than two summation
              orders of one: measured, kdjax - PyTorch runs ~1x the mirror floor on the ill-conditioned teacher
              but up to ~140x on student_kd_ema's parameters (20 steps, the study's XLA options). It is reported
              and decides nothing.

float32 decides:

  FORWARD_ATOL   logits of the same weights: 1e-5 (one forward, nothing amplifies; measured 3e-8 - 1e-7); and
                 with float64, each framework's float32 forward against its own float64 forward, and its step-1
                 loss against its float64 one within the loss bound: a reduced-precision pass (TF32, bf16) on
                 either side, even on both at once, fails there.
  LOSS_RTOL      the loss of the first steps: 1e-4 relative, LOSS_ATOL 2e-6 (a KL near 0, x T^2). Step 1 always
                 (same weights: a forward and a loss); with float64, each later step while rounding so far is
                 below 1/ROUNDING_MARGIN (10) of that bound. Later steps are reported, not decided. (Such a
                 step's |Δ| <= rounding + |Δ64| <= bound/10 where float64 agrees: it fails only with float64,
                 or where a framework's float32 path is not its float64 path.)

and reports the parameters and validation logits after N steps beside their rounding and mirror floor. Without
float64 (--dtype=float32) it decides the forward and step 1's loss.

Accuracy counts (both dtypes) are reported with the number of validation examples whose top-1 margin is within
twice the largest validation logit difference: the counts can differ only on those (where the top-1 differs,
kdjax's margin is at most 2 x that difference), so they follow from the logits and decide nothing on their own.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tolerances:
  forward_atol: float
  loss_rtol: float
  loss_atol: float
  param_rtol: float | None = None   # None: parameters and validation logits are reported, not decided
  param_atol: float | None = None
  logits_rtol: float | None = None
  rounding_margin: float | None = None  # float32: a later step's loss is decided while its rounding (against
                                        # float64) <= bound / rounding_margin

  @property
  def decides_trajectory(self) -> bool:
    """Whether every step, the final parameters and the final logits are decided (float64)."""
    return self.param_rtol is not None


FLOAT64 = Tolerances(forward_atol=1e-12, loss_rtol=1e-11, loss_atol=1e-13, param_rtol=1e-9, param_atol=1e-14,
                     logits_rtol=1e-10)
FLOAT32 = Tolerances(forward_atol=1e-5, loss_rtol=1e-4, loss_atol=2e-6, rounding_margin=10.0)


def for_dtype(dtype: str) -> Tolerances:
  return {"float32": FLOAT32, "float64": FLOAT64}[dtype]
