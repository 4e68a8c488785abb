"""kdjax.nets.block_conv: convs and pools on 2x2 pixel blocks compute the nets' own function.

float64 decides the convs (sums in another order: equal to ~1e-15); pools are selections, so their values and
gradients equal max_pool_2x2's bit for bit, ties included.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from kdjax.config import nets as config_nets
from kdjax.nets import block_conv
from kdjax.config import validation as config_validation
from kdjax import errors
from kdjax.config import defaults as config_lib
from kdjax.nets import models
from kdjax.nets.pooling import max_pool_2x2

# Not `optimized` (tests/conftest.py): each check compares two computations of the same build, in float64 (to
# ~1e-12 where float64 rounds at ~1e-16) or selections (pools, bit for bit).


def _conv(x, kernel, bias):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def _to_offset(x):
  """pixels -> offset layout, by its definition: the image with one zero pixel around it, in aligned blocks."""
  return block_conv.to_aligned(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))


def test_layouts_hold_the_pixels_their_definitions_say():
  x = np.arange(2 * 6 * 8 * 3, dtype=np.float32).reshape(2, 6, 8, 3)
  aligned, offset = np.asarray(block_conv.to_aligned(x)), np.asarray(_to_offset(x))
  assert aligned.shape == (2, 3, 4, 12) and offset.shape == (2, 4, 5, 12)
  for i, j, a, b, c in [(0, 0, 0, 0, 0), (2, 3, 1, 1, 2), (1, 2, 0, 1, 1)]:
    assert aligned[1, i, j, (2 * a + b) * 3 + c] == x[1, 2 * i + a, 2 * j + b, c]
  for i, j, a, b, c in [(1, 1, 0, 0, 0), (3, 4, 0, 0, 2), (2, 2, 1, 0, 1)]:
    assert offset[1, i, j, (2 * a + b) * 3 + c] == x[1, 2 * i - 1 + a, 2 * j - 1 + b, c]
  assert offset[0, 0, 2, 0] == 0  # pixel row -1: outside the image
  np.testing.assert_array_equal(block_conv.from_aligned(aligned), x)
  np.testing.assert_array_equal(block_conv.from_offset(offset), x)


@pytest.mark.parametrize("channels", [(3, 12), (12, 12), (5, 2)])
def test_block_conv_is_the_3x3_same_conv_in_float64(channels):
  c, d = channels
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((2, 8, 10, c)))
    kernel, bias = jnp.asarray(rng.standard_normal((3, 3, c, d))), jnp.asarray(rng.standard_normal(d))
    once = _conv(x, kernel, bias)
    offset, layout = block_conv.conv(block_conv.to_aligned(x), kernel, bias, "aligned")
    assert layout == "offset" and offset.dtype == jnp.float64
    np.testing.assert_allclose(block_conv.from_offset(offset), once, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(offset, _to_offset(block_conv.from_offset(offset)))  # border zeros exact
    kernel2 = jnp.asarray(rng.standard_normal((3, 3, d, d)))
    aligned, layout = block_conv.conv(offset, kernel2, bias, "offset")
    assert layout == "aligned"
    np.testing.assert_allclose(block_conv.from_aligned(aligned), _conv(once, kernel2, bias), rtol=0, atol=1e-11)
    # float32 activations meeting float64 weights compute in float64, as nn.Conv does (the parity harness's case)
    promoted, _ = block_conv.conv(block_conv.to_aligned(x.astype(jnp.float32)), kernel, bias, "aligned")
    assert promoted.dtype == jnp.float64


def _bits(array) -> np.ndarray:
  return np.asarray(array, np.float32).view(np.uint32)


@pytest.mark.parametrize("layout", ["aligned", "offset"])
@pytest.mark.parametrize("kind", ["float", "ties"])
def test_block_pools_equal_max_pool_bit_for_bit(layout, kind):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 8, 6, 5)) if kind == "float" else rng.integers(-1, 2, (2, 8, 6, 5))
  x = jnp.asarray(x.astype(np.float32))
  cotangent = jnp.asarray(rng.standard_normal((2, 4, 3, 5)).astype(np.float32))
  to_layout = block_conv.to_aligned if layout == "aligned" else _to_offset
  pooled, vjp = jax.vjp(lambda x: block_conv.max_pool(to_layout(x), layout), x)
  expected, expected_vjp = jax.vjp(max_pool_2x2, x)
  np.testing.assert_array_equal(_bits(pooled), _bits(expected))
  np.testing.assert_array_equal(_bits(vjp(cotangent)[0]), _bits(expected_vjp(cotangent)[0]))


@pytest.mark.parametrize("net,activation,image_size", [
    pytest.param("teacher", "none", 64, marks=pytest.mark.slow),   # float64 gradients of the 12 convs at 64x64
    pytest.param("teacher", "relu", 32, marks=pytest.mark.slow),
    pytest.param("teacher", "none", 20, marks=pytest.mark.slow),
    pytest.param("student", "none", 64, marks=pytest.mark.slow),   # float64 at 64x64 (16 s)
    pytest.param("student", "relu", 32, marks=pytest.mark.slow),   # float64 with ReLU at 32x32 (18 s)
    ("student", "none", 20)])
def test_nets_on_blocks_compute_the_same_function(net, activation, image_size):
  """Same parameters from the same key; logits and every gradient equal to float64 rounding (at 20x20 the 5x5
  layers cannot be blocked and fall back to nn.Conv inside the same net); float32 logits at its rounding."""
  factory = models.MODEL_FACTORIES[net]
  on_xla, on_blocks = factory(10, activation), factory(10, activation, conv="blocks")
  shape = (image_size, image_size, 3)
  params = models.init_params(on_xla, jax.random.PRNGKey(4), shape)
  blocked = models.init_params(on_blocks, jax.random.PRNGKey(4), shape)
  assert jax.tree.structure(params) == jax.tree.structure(blocked)
  jax.tree.map(np.testing.assert_array_equal, params, blocked)
  images = np.random.default_rng(3).standard_normal((3, *shape))
  # Each model's logits and gradient in one jitted program (op by op, every primitive compiled on its own took
  # most of this test's time); the functions compared are the same.
  logits_and_grads = lambda model: jax.jit(lambda p, x: (model.apply({"params": p}, x), jax.grad(
      lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x))))(p)))
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda leaf: leaf.astype(jnp.float64), params)
    (xla_logits, xla_grads), (block_logits, block_grads) = (logits_and_grads(model)(params64, images)
                                                            for model in (on_xla, on_blocks))
    for model_output, block_output in zip(jax.tree.leaves(xla_grads), jax.tree.leaves(block_grads)):
      np.testing.assert_allclose(block_output, model_output, rtol=0, atol=1e-12 * np.abs(model_output).max())
    np.testing.assert_allclose(block_logits, xla_logits, rtol=0, atol=1e-13)
  images32 = images.astype(np.float32)
  logits = on_xla.apply({"params": params}, images32)
  np.testing.assert_allclose(on_blocks.apply({"params": params}, images32), logits, rtol=0,
                             atol=1e-5 * float(np.abs(logits).max()))


def test_config_chooses_each_nets_convs_and_older_runs_mean_xla():
  config = config_lib.default_config()
  assert (config.speed.teacher_conv, config.speed.student_conv) == ("blocks", "xla")
  assert config_nets.from_config("teacher", 10, config).conv == "blocks"
  assert config_nets.from_config("student", 10, config).conv == "xla"
  config.speed.teacher_conv = "winograd"
  with pytest.raises(errors.ConfigError, match=r"^speed.teacher_conv must be one of"):
    config_validation.validate(config)
  # A workdir from before speed.teacher_conv existed computed with nn.Conv: resuming it with today's default is
  # a change, named; and its nets are rebuilt as they were.
  current = json.loads(config_lib.default_config().to_json_best_effort())
  older = json.loads(config_lib.default_config().to_json_best_effort())
  del older["speed"]["teacher_conv"], older["speed"]["student_conv"]
  assert config_lib.differences(older, current) == ['speed.teacher_conv ("xla" -> "blocks")']
  assert config_nets.from_config("teacher", 10, ml_collections.ConfigDict(older)).conv == "xla"
