"""kdjax.nets.onednn_pool: the 2x2 max-pool in oneDNN equals kdjax.nets.pooling.max_pool_2x2 bit for bit (values and
gradients, ties included), and a oneDNN conv's "fast" pool is it, without changing a bit of a training step."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.nets import models
from kdjax.nets import onednn_conv
from kdjax.nets import onednn_pool
from kdjax.nets import pooling

pytestmark = pytest.mark.skipif(not onednn_conv.available(), reason=onednn_conv.unavailable_reason() or "-")

# Every pool input of both nets on 64x64 and 32x32 images (12 channels), odd sides (the last row / column dropped),
# 3 channels, batch 1 and an odd batch.
SHAPES = [(37, 64, 64, 12), (37, 32, 32, 12), (5, 16, 16, 12), (5, 8, 8, 12), (1, 4, 4, 12), (3, 7, 9, 12),
          (2, 6, 6, 3), (128, 2, 2, 12)]


def _tied(shape, seed=0):
  """Values with many ties inside windows: halves in [-2, 2], a third of the rows zero, some windows all equal."""
  rng = np.random.default_rng(seed)
  x = np.round(rng.standard_normal(shape) * 2) / 2
  x[:, ::3] = 0.0
  x[0, :2, :2] = 1.5
  return jnp.asarray(x, jnp.float32)


def _value_and_grad(pool, x, dy):
  y, vjp = jax.vjp(pool, x)
  return y, vjp(dy)[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_equal_the_xla_pool_bit_for_bit(shape):
  n, h, w, c = shape
  for seed in (0, 1):
    x = _tied(shape, seed)
    dy = jnp.asarray(np.random.default_rng(seed + 7).standard_normal((n, h // 2, w // 2, c)), jnp.float32)
    ours = jax.jit(lambda x, dy: _value_and_grad(onednn_pool.max_pool_2x2, x, dy))(x, dy)
    reference = jax.jit(lambda x, dy: _value_and_grad(pooling.max_pool_2x2, x, dy))(x, dy)
    for got, want in zip(ours, reference):
      assert got.shape == want.shape and got.dtype == want.dtype
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_oneDNN_runs_its_jit_kernels_and_keeps_one_primitive_pair_per_shape():
  for shape in [(128, 64, 64, 12), (128, 32, 32, 12), (128, 16, 16, 12), (128, 8, 8, 12), (1, 8, 8, 12)]:
    implementation = onednn_pool.implementation(*shape)
    assert implementation.count("jit:") == 2 and "ref" not in implementation, (shape, implementation)
    # one byte of argmax a pooled value
    assert onednn_pool.workspace_bytes(*shape) == shape[0] * shape[1] // 2 * shape[2] // 2 * shape[3]
  with pytest.raises(ValueError, match="float32 NHWC"):
    onednn_pool.max_pool_2x2(jnp.zeros((2, 4, 4), jnp.float32))


def test_a_oneDNN_conv_is_pooled_in_oneDNN_and_the_step_keeps_its_bits(monkeypatch):
  """The student's float32 program pools in oneDNN after its oneDNN convs (4 pool custom calls); its loss and every
  parameter gradient are the same bits as with kdjax.nets.pooling's pool in its place."""
  model = models.student_net(10, engine="onednn")
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
  images = _tied((6, 32, 32, 3), seed=3)
  labels = jnp.arange(6) % 10

  def loss(params, images):
    logits = model.apply({"params": params}, images)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

  grad = lambda: jax.jit(jax.value_and_grad(loss))(params, images)
  assert jax.jit(model.apply).lower({"params": params}, images).as_text().count("kdjax_onednn_pool_forward") == 4
  ours = grad()
  monkeypatch.setattr(onednn_pool, "max_pool_2x2", pooling.max_pool_2x2)
  assert "kdjax_onednn_pool" not in jax.jit(model.apply).lower({"params": params}, images).as_text()
  reference = grad()
  for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # nn.max_pool asked for by name stays nn.max_pool; XLA's convs keep XLA's pool
  assert "kdjax_onednn_pool" not in jax.jit(models.student_net(10, engine="onednn", pool="reduce_window").apply).lower(
      {"params": params}, images).as_text()
  assert "kdjax_onednn_pool" not in jax.jit(models.student_net(10).apply).lower({"params": params}, images).as_text()


def test_the_report_says_the_pools_run_in_oneDNN():
  config = config_lib.default_config()
  assert config_nets.describe(config)["student"]["why"].endswith("; 2x2 max-pools in oneDNN too")
  config.speed.pool = "reduce_window"
  assert "max-pools" not in config_nets.describe(config)["student"]["why"]


def test_calls_from_several_threads_at_once_are_run_one_at_a_time_and_correctly():
  """The extension runs every oneDNN call on its own thread, one at a time, whichever thread calls: jitted convs and
  pools from four Python threads at once give the bits they give alone."""
  kernel = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 12, 12)), jnp.float32)
  bias = jnp.zeros(12, jnp.float32)
  fn = jax.jit(lambda x: onednn_pool.max_pool_2x2(onednn_conv.conv(x, kernel, bias)))
  inputs = [_tied((4, 16, 16, 12), seed) for seed in range(8)]
  alone = [np.asarray(fn(x)) for x in inputs]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    together = list(pool.map(lambda x: np.asarray(fn(x)), inputs * 4))
  for index, got in enumerate(together):
    np.testing.assert_array_equal(got, alone[index % len(inputs)])

