"""Golden values worked by hand for two classes.

s = [0, 0] -> q = [1/2, 1/2];  t = [ln 3, 0] -> p = softmax(t) = [3/4, 1/4].
KL(p||q) at T=1 = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120
KL(q||p) (the reversed trap) = 1/2 ln(2/3) + 1/2 ln 2 = 0.1438410
T = 2: p = softmax(t/2) = [sqrt3, 1]/(1+sqrt3); KL = p1 ln(2 p1) + p2 ln(2 p2) = 0.0363408, times T^2 = 0.1453631
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.training import losses

pytestmark = pytest.mark.optimized   # float64 / published references

STUDENT = jnp.array([[0.0, 0.0]])
TEACHER = jnp.array([[math.log(3.0), 0.0]])
KL_T1 = 0.1308120
REVERSED_KL_T1 = 0.1438410
KL_T2 = 0.0363408


def test_distill_kl_golden_t1():
  assert float(losses.distill_kl(STUDENT, TEACHER, 1.0)) == pytest.approx(KL_T1, abs=1e-6)


def test_distill_kl_is_not_reversed():
  value = float(losses.distill_kl(STUDENT, TEACHER, 1.0))
  assert value != pytest.approx(REVERSED_KL_T1, abs=1e-4)
  assert float(losses.distill_kl(TEACHER, STUDENT, 1.0)) == pytest.approx(REVERSED_KL_T1, abs=1e-6)


def test_distill_kl_has_t_squared():
  value = float(losses.distill_kl(STUDENT, TEACHER, 2.0))
  assert value == pytest.approx(4 * KL_T2, abs=1e-6)
  assert value != pytest.approx(KL_T2, abs=1e-3)       # the missing-T^2 trap
  assert value != pytest.approx(2 * KL_T2, abs=1e-3)   # scaled by T, not T^2


def test_distill_kl_is_batchmean_not_sum_nor_elementwise_mean():
  student = jnp.concatenate([STUDENT, jnp.array([[1.0, 1.0]])])  # shifted logits: the same q
  teacher = jnp.concatenate([TEACHER, TEACHER])
  value = float(losses.distill_kl(student, teacher, 1.0))
  assert value == pytest.approx(KL_T1, abs=1e-6)            # (KL + KL) / batch
  assert value != pytest.approx(2 * KL_T1, abs=1e-4)         # reduction="sum"
  assert value != pytest.approx(KL_T1 / 2, abs=1e-4)         # reduction="mean" (over N*K elements)


def test_no_gradient_into_the_teacher():
  grad = jax.grad(lambda t: losses.distill_kl(STUDENT, t, 2.0))(TEACHER)
  np.testing.assert_array_equal(grad, 0.0)


def test_student_gradient_is_t_times_softmax_difference():
  # d/ds [T^2 KL(p || softmax(s/T))] = T (q - p) per example, divided by the batch size.
  temperature = 3.0
  grad = jax.grad(lambda s: losses.distill_kl(s, TEACHER, temperature))(STUDENT)
  p = jax.nn.softmax(TEACHER / temperature)
  q = jax.nn.softmax(STUDENT / temperature)
  np.testing.assert_allclose(grad, temperature * (q - p), atol=1e-6)


def test_cross_entropy_golden():
  logits = jnp.array([[math.log(3.0), 0.0], [0.0, 0.0]])
  # -ln(3/4) and -ln(1/2), averaged.
  expected = (-math.log(0.75) - math.log(0.5)) / 2
  assert float(losses.cross_entropy(logits, jnp.array([0, 1]))) == pytest.approx(expected, abs=1e-6)


def test_student_objective_weights():
  labels = jnp.array([0])
  kd = losses.distill_kl(STUDENT, TEACHER, 2.0)
  ce = losses.cross_entropy(STUDENT, labels)
  assert float(losses.student_objective(STUDENT, TEACHER, labels, 2.0, 1.0, 0.0)) == pytest.approx(float(kd))
  assert float(losses.student_objective(STUDENT, TEACHER, labels, 2.0, 0.5, 2.0)) == pytest.approx(
      float(0.5 * kd + 2.0 * ce))


# --- KD at any temperature: against float64 (issue 36) ----------------------------------------------------------

TEMPERATURES = (1.0, 2.0, 4.0, 10.0, 100.0, 300.0, 1000.0)


def _float64_kd(student, teacher, temperature):
  """batchmean KL(softmax(t/T) || softmax(s/T)) · T² and its gradient T·(q − p)/N, in float64."""
  def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  log_p = log_softmax(np.asarray(teacher, np.float64) / temperature)
  log_q = log_softmax(np.asarray(student, np.float64) / temperature)
  p, q = np.exp(log_p), np.exp(log_q)
  count = len(student)
  return (p * (log_p - log_q)).sum(-1).mean() * temperature**2, temperature * (q - p) / count


def _pair(kind: str, seed: int):
  """(student, teacher) float32 [64, 10]: a weak teacher (near-uniform logits, as an untrained or collapsed one),
  a strong one, and a student already close to its teacher (the issue's T = 1000 case)."""
  rng = np.random.default_rng(seed)
  student = rng.normal(size=(64, 10))
  teacher = {"weak": 0.01 * rng.normal(size=(64, 10)), "strong": 8.0 * rng.normal(size=(64, 10)),
             "close": None}[kind]
  if teacher is None:
    teacher = 5.0 * rng.normal(size=(64, 10))
    student = teacher + 0.01 * rng.normal(size=(64, 10))
  return jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)


@pytest.mark.parametrize("kind", ["weak", "strong", "close"])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_distill_kl_matches_float64_at_every_temperature(kind, temperature):
  """At T = 1 ... 1000: value > 0, gradient within 1e-4 of its largest entry; value within 1e-4 relative of
  float64 above PLAIN_UP_TO (the exact form), and within the plain float32 form's 1e-4 relative + 1e-6·T² absolute
  at or below it (the old program, kept). kdjax before issue 36 (the plain form, clamped at 0, at every T) was off
  by up to 100 % at T >= 300 (0 or a few ulps of noise times T²) and its clamp zeroed the gradient wherever that
  noise fell below 0."""
  student, teacher = _pair(kind, seed=int(temperature))
  value, grad = jax.value_and_grad(losses.distill_kl)(student, teacher, temperature)
  expected, expected_grad = _float64_kd(student, teacher, temperature)
  assert float(value) > 0.0
  floor = 1e-6 * temperature**2 if temperature <= losses.PLAIN_UP_TO else 0.0
  assert float(value) == pytest.approx(expected, rel=1e-4, abs=floor)
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected_grad, rtol=0,
                             atol=1e-4 * np.abs(expected_grad).max())


def test_distill_kl_trains_where_the_float32_form_rounds_below_zero():
  """The issue's failure: at T = 1000 a student close to its teacher has a float32 Σ p·(log p − log q) below 0; the
  clamp max(loss, 0) gave loss 0 and gradient 0, so the student never moved. The loss is now the float64 value
  and its gradient T·(q − p)/N."""
  rng = np.random.default_rng(0)
  teacher = jnp.asarray(rng.normal(size=(256, 10)) * 5, jnp.float32)
  student = teacher + jnp.asarray(rng.normal(size=(256, 10)) * 0.01, jnp.float32)
  temperature = 1000.0
  plain = losses.kl_per_example(student, teacher, temperature).mean() * temperature**2
  assert float(plain) <= 0.0   # the rounding this test is about
  value, grad = jax.value_and_grad(losses.distill_kl)(student, teacher, temperature)
  expected, expected_grad = _float64_kd(student, teacher, temperature)
  assert float(value) == pytest.approx(expected, rel=1e-4) and expected > 0
  assert float(jnp.abs(grad).max()) > 0.0
  np.testing.assert_allclose(np.asarray(grad, np.float64), expected_grad, rtol=0,
                             atol=1e-4 * np.abs(expected_grad).max())


def original_kl_per_example(student_logits, teacher_logits, temperature):
  """kl_per_example as kdjax computed it before issue 36, frozen here: a NaN teacher probability gave a 0 term."""
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  teacher_probs = jnp.exp(teacher_log_probs)
  return jnp.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0).sum(axis=-1)


def _clamped_plain_kd(student_logits, teacher_logits, temperature, kl_per_example=losses.kl_per_example):
  """distill_kl's plain form, max(batchmean Σ p·(log p − log q) · T², 0); with original_kl_per_example, kdjax's
  before issue 36."""
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  loss = losses.batch_mean(kl_per_example(student_logits, teacher_logits, temperature)) * temperature**2
  return jnp.maximum(loss, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distill_kl_keeps_the_old_bits_up_to_temperature_10(seed):
  """At T <= PLAIN_UP_TO (the digits study's T = 4) the loss and its gradient are those of kdjax before issue 36,
  bit for bit, eager and jitted, on the logits and through a layer under them (the study's own step:
  tests/training/test_train.py)."""
  rng = np.random.default_rng(seed)
  teacher = jnp.asarray(rng.normal(size=(64, 10)) * 6, jnp.float32)
  features = jnp.asarray(rng.normal(size=(64, 32)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(32, 10)) * 0.3, jnp.float32)
  assert losses.PLAIN_UP_TO >= 4.0
  for transform in (lambda f: f, jax.jit):
    for new, old, argument in (
        (lambda s: losses.distill_kl(s, teacher, 4.0),
         lambda s: _clamped_plain_kd(s, teacher, 4.0, original_kl_per_example), features @ weights),
        (lambda w: losses.distill_kl(features @ w, teacher, 4.0),
         lambda w: _clamped_plain_kd(features @ w, teacher, 4.0, original_kl_per_example), weights)):
      value, grad = transform(jax.value_and_grad(new))(argument)
      value_old, grad_old = transform(jax.value_and_grad(old))(argument)
      assert float(value) == float(value_old)
      np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_old))


def test_exact_kl_is_zero_only_where_the_distributions_agree():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(8, 10)) * 3, jnp.float32)
  for temperature in (1.0, 1000.0):
    value, grad = jax.value_and_grad(lambda s: losses.exact_kl_per_example(s, logits, temperature).sum())(logits)
    np.testing.assert_array_equal(np.asarray(value), 0.0)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    # one logit moved by 1e-3: every KL > 0 (a sum of terms >= 0), where the float32 form can give <= 0
    nudged = logits.at[:, 0].add(1e-3)
    assert bool(jnp.all(losses.exact_kl_per_example(nudged, logits, temperature) > 0))


def test_distill_kl_propagates_nan():
  """A NaN logit (a NaN weight) makes the loss and the gradient NaN in either form, never a finite number."""
  student, teacher = _pair("close", seed=5)
  for temperature in (4.0, 1000.0):
    value, grad = jax.value_and_grad(losses.distill_kl)(student.at[3, 2].set(jnp.nan), teacher, temperature)
    assert np.isnan(float(value)) and np.isnan(np.asarray(grad)).any()


def test_distill_kl_masked_rows_do_not_count_in_the_exact_form():
  """weights (a batch padded across devices): the padded rows change neither value nor gradient at T = 1000."""
  student, teacher = _pair("close", seed=6)
  padded = lambda x: jnp.concatenate([x, jnp.zeros((4, x.shape[1]), x.dtype)])
  mask = jnp.concatenate([jnp.ones(64), jnp.zeros(4)])
  value, grad = jax.value_and_grad(losses.distill_kl)(student, teacher, 1000.0)
  value_masked, grad_masked = jax.value_and_grad(losses.distill_kl)(padded(student), padded(teacher), 1000.0, mask)
  assert float(value_masked) == pytest.approx(float(value), rel=1e-6)
  np.testing.assert_allclose(np.asarray(grad_masked)[:64], np.asarray(grad), rtol=1e-5, atol=1e-12)
  np.testing.assert_array_equal(np.asarray(grad_masked)[64:], 0.0)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_distill_kl_up_to_temperature_10_lowers_to_the_old_program(temperature):
  """At T <= PLAIN_UP_TO the jitted loss and gradient lower to the same StableHLO as kdjax's before issue 36, text
  for text: the same program, so the same bits in every step of a study (the digits study's T = 4). Above it the
  program is the exact form's."""
  student, teacher = jnp.ones((64, 10)), jnp.zeros((64, 10))
  lowered = lambda loss, t: jax.jit(jax.value_and_grad(lambda s, u: loss(s, u, t))).lower(student, teacher).as_text()
  assert lowered(losses.distill_kl, temperature) == lowered(_clamped_plain_kd, temperature)
  assert lowered(losses.distill_kl, 10.5) != lowered(_clamped_plain_kd, 10.5)


def test_the_kd_loss_at_temperature_1000_is_not_negative():
  """Nearly agreeing logits at T = 1000: each log-softmax is ~-log K ± 1e-5, and the float32 sum of
  p·(log p − log q) comes out below 0 for many examples; T² = 10⁶ makes that a visibly negative loss."""
  rng = np.random.default_rng(0)
  teacher = jnp.asarray(rng.normal(size=(256, 10)) * 5, jnp.float32)
  student = teacher + jnp.asarray(rng.normal(size=(256, 10)) * 0.01, jnp.float32)
  temperature = 1000.0
  log_p = jax.nn.log_softmax(teacher / temperature)
  unclamped = (jnp.exp(log_p) * (log_p - jax.nn.log_softmax(student / temperature))).sum(-1)
  assert float(unclamped.mean()) * temperature**2 < 0   # the rounding this test is about
  assert float(losses.distill_kl(student, teacher, temperature)) >= 0.0
  assert float(losses.student_objective(student, teacher, jnp.zeros(256, jnp.int32), temperature, 1.0, 0.0)) >= 0.0


def test_the_clamp_leaves_a_positive_kl_and_its_gradient_as_they_were():
  rng = np.random.default_rng(1)
  teacher = jnp.asarray(rng.normal(size=(64, 10)) * 3, jnp.float32)
  student = jnp.asarray(rng.normal(size=(64, 10)) * 3, jnp.float32)

  def unclamped(s):
    log_p = jax.nn.log_softmax(teacher / 4.0)
    return (jnp.exp(log_p) * (log_p - jax.nn.log_softmax(s / 4.0))).sum(-1).mean() * 16.0

  value, grad = jax.value_and_grad(lambda s: losses.distill_kl(s, teacher, 4.0))(student)
  value_ref, grad_ref = jax.value_and_grad(unclamped)(student)
  assert float(value) == float(value_ref)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(grad_ref))
