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
