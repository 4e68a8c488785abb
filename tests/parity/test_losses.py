"""kdjax.training.losses against the original's DistillKL and PyTorch's CrossEntropyLoss: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from kdjax.training import losses
from parity import reference

pytestmark = pytest.mark.optimized   # float64 / published references

# float32 on both sides: a loss is a sum of ~K*N terms, 1e-5 relative is a few ulps of accumulation. The KD loss
# of two nearby distributions is a difference of near-equal terms p*log p and p*log q, each with ~1e-7 absolute
# rounding in the log, then scaled by T^2 (its gradient, (q - p)*T/N, by T): absolute floors of 1e-6*T^2, 1e-7*T.
RTOL, ATOL = 1e-5, 1e-7


def _logits(seed: int, scale: float, shape=(16, 10)):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _torch_kd(student, teacher, temperature):
  student_t = torch.tensor(student, requires_grad=True)
  loss = reference.DistillKL(temperature)(student_t, torch.tensor(teacher))
  loss.backward()
  return loss.item(), student_t.grad.numpy()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("scale", [0.1, 3.0, 20.0])
def test_distill_kl_value_and_gradient(temperature, scale):
  student, teacher = _logits(0, scale), _logits(1, scale)
  value, grad = jax.value_and_grad(losses.distill_kl)(jnp.asarray(student), jnp.asarray(teacher), temperature)
  torch_value, torch_grad = _torch_kd(student, teacher, temperature)
  np.testing.assert_allclose(float(value), torch_value, rtol=RTOL, atol=1e-6 * temperature**2)
  np.testing.assert_allclose(np.asarray(grad), torch_grad, rtol=RTOL, atol=1e-7 * temperature)


def test_distill_kl_traps_would_be_caught():
  """The reversed KL, a missing T^2 and sum-instead-of-batchmean all differ from DistillKL by far more than RTOL."""
  student, teacher, temperature = _logits(0, 3.0), _logits(1, 3.0), 4.0
  torch_value, _ = _torch_kd(student, teacher, temperature)
  s, t = jnp.asarray(student), jnp.asarray(teacher)
  reversed_kl = losses.kl_per_example(t, s, temperature).mean() * temperature**2
  no_t2 = losses.kl_per_example(s, t, temperature).mean()
  summed = losses.kl_per_example(s, t, temperature).sum() * temperature**2
  for wrong in (reversed_kl, no_t2, summed):
    assert abs(float(wrong) - torch_value) > 100 * RTOL * abs(torch_value)


def test_distill_kl_teacher_gets_no_gradient():
  student, teacher = jnp.asarray(_logits(0, 3.0)), jnp.asarray(_logits(1, 3.0))
  teacher_grad = jax.grad(losses.distill_kl, argnums=1)(student, teacher, 4.0)
  assert float(jnp.max(jnp.abs(teacher_grad))) == 0.0


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_cross_entropy_value_and_gradient(scale):
  logits = _logits(2, scale)
  labels = np.random.default_rng(3).integers(0, 10, size=16)
  value, grad = jax.value_and_grad(losses.cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
  logits_t = torch.tensor(logits, requires_grad=True)
  torch_value = nn.CrossEntropyLoss()(logits_t, torch.tensor(labels))
  torch_value.backward()
  np.testing.assert_allclose(float(value), torch_value.item(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), logits_t.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kd_weight,ce_weight", [(1.0, 0.0), (0.7, 0.3), (0.0, 1.0)])
def test_student_objective_matches_the_reference_loss(kd_weight, ce_weight):
  student, teacher = _logits(4, 3.0), _logits(5, 3.0)
  labels = np.random.default_rng(6).integers(0, 10, size=16)
  value, grad = jax.value_and_grad(losses.student_objective)(
      jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), 4.0, kd_weight, ce_weight)
  options = reference.LoopOptions(temperature=4.0, kd_weight=kd_weight, ce_weight=ce_weight)
  student_t = torch.tensor(student, requires_grad=True)
  torch_value = reference._student_loss(student_t, torch.tensor(teacher), torch.tensor(labels),
                                        reference.DistillKL(4.0), nn.CrossEntropyLoss(), options)
  torch_value.backward()
  np.testing.assert_allclose(float(value), torch_value.item(), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(grad), student_t.grad.numpy(), rtol=RTOL, atol=ATOL)
