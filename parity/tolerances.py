"""The parity tolerances, in one place (why and what was measured: docs/parity.md#tolerances-and-why).

float64 decides semantics: both frameworks differ only by float64 rounding (~1e-16 per op), so every quantity is
checked, with bounds 1e2 - 1e4 above what was measured:
  forward_atol 1e-12 (logits of the same weights), loss_rtol 1e-11 + loss_atol 1e-13 (every step's loss),
  param_rtol 1e-9 of how far training moved them + param_atol 1e-14, logits_rtol 1e-10 of the largest logit.
float32 is measured against the rounding of the same run, rounding = |kdjax32 - kdjax64| + |PyTorch32 - PyTorch64|
(where float64 agrees, |kdjax32 - PyTorch32| <= rounding by the triangle inequality), and decides only:
  forward_atol 1e-5 (the same weights, and each framework against its own float64 forward), and
  loss_rtol 1e-4 + loss_atol 2e-6 for step 1 and each later step while rounding so far < bound / rounding_margin.
Parameters and validation logits after N steps are reported beside rounding and the mirror floor (parity/mirror.py);
accuracy counts follow from the logits (only examples within 2 x the logits' difference of a tie can differ).
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
