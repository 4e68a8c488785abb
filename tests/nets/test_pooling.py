"""The fast 2x2 max-pool equals nn.max_pool bit for bit: values and gradients, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.training import losses
from kdjax.nets import models
from kdjax.nets.pooling import max_pool_2x2


def _reference(x):
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def _bits(array) -> np.ndarray:
  """float32 as its bit patterns: equality here is bit-for-bit, signed zeros included."""
  return np.asarray(array, np.float32).view(np.uint32)


def _inputs(kind: str, shape, rng):
  if kind == "float":
    return rng.standard_normal(shape).astype(np.float32)
  if kind == "ties":  # three values: most windows hold two or more equal maxima
    return rng.integers(-1, 2, shape).astype(np.float32)
  if kind == "all_equal":
    return np.full(shape, 0.5, np.float32)
  raise ValueError(kind)


@pytest.mark.parametrize("kind", ["float", "ties", "all_equal"])
@pytest.mark.parametrize("shape", [(3, 8, 8, 5), (2, 6, 10, 3), (2, 7, 9, 4)])  # odd sides: VALID floor
def test_values_and_gradients_equal_reduce_window_bit_for_bit(kind, shape):
  rng = np.random.default_rng(0)
  x = jnp.asarray(_inputs(kind, shape, rng))
  out_shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  cotangent = jnp.asarray(rng.standard_normal(out_shape).astype(np.float32))
  np.testing.assert_array_equal(_bits(jax.jit(max_pool_2x2)(x)), _bits(jax.jit(_reference)(x)))
  grad_of = lambda pool: jax.jit(jax.grad(lambda v: jnp.sum(pool(v) * cotangent)))(x)
  fast, reference = grad_of(max_pool_2x2), grad_of(_reference)
  np.testing.assert_array_equal(_bits(fast), _bits(reference))
  assert np.count_nonzero(np.asarray(fast)) == np.prod(out_shape)  # one winner per window


def test_ties_go_to_the_first_maximum_in_row_major_order():
  window = jnp.array([[1.0, 2.0], [2.0, 2.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda v: max_pool_2x2(v).sum())(window)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


def _integer_params(params, scale):
  """Small-integer weights: integer inputs then stay exact integers through every conv, so the pools see ties."""
  return jax.tree_util.tree_map(lambda p: jnp.round(p * scale), params)


@pytest.mark.parametrize("factory", [models.teacher_net, models.student_net])
@pytest.mark.parametrize("data", ["float", "ties"])
def test_whole_net_logits_and_gradients_equal_bit_for_bit(factory, data):
  rng = np.random.default_rng(1)
  fast, reference = factory(10, pool="fast"), factory(10, pool="reduce_window")
  params = models.init_params(fast, jax.random.PRNGKey(0), (16, 16, 3))
  if data == "ties":
    params = _integer_params(params, 4.0)  # U(-1/sqrt(fan_in), ..) * 4 rounds to -1, 0, 1
    images = jnp.asarray(rng.integers(0, 2, (6, 16, 16, 3)).astype(np.float32))
  else:
    images = jnp.asarray(rng.standard_normal((6, 16, 16, 3)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 6))

  def loss_and_grad(model):
    loss = lambda p: losses.cross_entropy(model.apply({"params": p}, images), labels)
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss_fast, grads_fast), (loss_ref, grads_ref) = loss_and_grad(fast), loss_and_grad(reference)
  assert _bits(loss_fast) == _bits(loss_ref)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(_bits(a), _bits(b)), grads_fast, grads_ref)
  np.testing.assert_array_equal(_bits(jax.jit(fast.apply)({"params": params}, images)),
                                _bits(jax.jit(reference.apply)({"params": params}, images)))


def test_unknown_pool_is_an_error():
  model = models.student_net(10, pool="average")
  with pytest.raises(ValueError, match="pool must be one of"):
    models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
