"""kdjax.nets.onednn_pool: the 2x2 max-pool of the oneDNN path equals kdjax.nets.pooling.max_pool_2x2 bit for bit
(values and gradients, ties, NaN, infinities and signed zeros included), and a oneDNN conv's "fast" pool is it,
without changing a bit of a training step; a NaN weight gives a non-finite loss on the oneDNN path as on XLA's."""

import concurrent.futures

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.nets import models
from kdjax.training import optim
from kdjax.training import train
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


NAN, INF = np.float32(np.nan), np.float32(np.inf)
# Windows (a, b, c, d) in row-major order where a max that starts from -FLT_MAX, skips NaN or keeps the first of a
# -0 / +0 tie (oneDNN's pooling primitive) differs from XLA's max; max_pool_2x2 puts a NaN window's gradient at d.
SPECIAL_WINDOWS = [(1, NAN, 0, 0), (NAN, 1, 2, 3), (0, 0, 0, NAN), (NAN, NAN, NAN, NAN), (-INF, -INF, -INF, -INF),
                   (-INF, -INF, -INF, -5), (INF, NAN, 0, 0), (NAN, INF, 1, 1), (INF, INF, 1, 1), (1, INF, INF, 2),
                   (-0.0, 0.0, 0.0, 0.0), (0.0, -0.0, -0.0, -0.0), (-0.0, -0.0, -0.0, -0.0), (-1, -0.0, -1, 0.0),
                   (-0.0, -1, 0.0, -0.0), (-INF, NAN, -INF, -INF)]


def _special(shape, seed=0):
  """_tied values with the SPECIAL_WINDOWS written over random windows (each window of each channel at random,
  a quarter of them special), and single NaN, +inf, -inf and -0.0 corners sprinkled over the rest."""
  rng = np.random.default_rng(seed)
  x = np.array(_tied(shape, seed))
  n, h, w, c = shape
  windows = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)   # a view: writes go to x
  pick = rng.integers(0, 4 * len(SPECIAL_WINDOWS), (n, h // 2, w // 2, c))
  for index, (a, b, cc, d) in enumerate(SPECIAL_WINDOWS):
    where = pick == index
    for (row, column), value in zip(((0, 0), (0, 1), (1, 0), (1, 1)), (a, b, cc, d)):
      windows[:, :, row, :, column][where] = value
  for value in (NAN, INF, -INF, -0.0):
    x[rng.random(shape) < 0.02] = value
  return jnp.asarray(x, jnp.float32)


def _assert_same_bits(got, want, what):
  """Equal shapes, NaN at the same places, and every other value the same bits (the sign of a zero included)."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape and got.dtype == want.dtype, what
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
  np.testing.assert_array_equal(np.where(np.isnan(got), 0, got).view(np.uint32),
                                np.where(np.isnan(want), 0, want).view(np.uint32), err_msg=f"{what}: bits")


@pytest.mark.parametrize("shape", SHAPES)
def test_nan_infinities_and_signed_zeros_pool_as_in_the_xla_pool(shape):
  """NaN propagates (also where it is the only NaN of its window, and where every corner is NaN), an all -inf
  window gives -inf, a -0.0 / +0.0 tie +0.0, values and gradients; a NaN window's dy goes where max_pool_2x2
  puts it (its last corner: no corner equals NaN)."""
  n, h, w, c = shape
  for seed in (0, 1):
    x = _special(shape, seed)
    assert np.isnan(np.asarray(pooling.max_pool_2x2(x))).any() or h < 2 or w < 2
    # dy with both signs of zero among its values, so the gradients' sign bits are checked too
    dy = np.random.default_rng(seed + 7).standard_normal((n, h // 2, w // 2, c)).astype(np.float32)
    dy[::2, ::3] = -0.0
    ours = jax.jit(lambda x, dy: _value_and_grad(onednn_pool.max_pool_2x2, x, dy))(x, jnp.asarray(dy))
    reference = jax.jit(lambda x, dy: _value_and_grad(pooling.max_pool_2x2, x, dy))(x, jnp.asarray(dy))
    for got, want, what in zip(ours, reference, ("values", "gradients")):
      _assert_same_bits(got, want, f"{shape} seed {seed} {what}")


def test_each_special_window_alone():
  """Every SPECIAL_WINDOWS entry at 12 channels (the vector loop) and 3 (the scalar one): the issue's cases by name."""
  for channels in (12, 3):
    x = np.zeros((1, 2, 2 * len(SPECIAL_WINDOWS), channels), np.float32)
    for index, (a, b, c, d) in enumerate(SPECIAL_WINDOWS):
      x[0, 0, 2 * index], x[0, 0, 2 * index + 1], x[0, 1, 2 * index], x[0, 1, 2 * index + 1] = a, b, c, d
    dy = jnp.arange(1, len(SPECIAL_WINDOWS) * channels + 1, dtype=jnp.float32).reshape(1, 1, -1, channels)
    ours = _value_and_grad(onednn_pool.max_pool_2x2, jnp.asarray(x), dy)
    reference = _value_and_grad(pooling.max_pool_2x2, jnp.asarray(x), dy)
    for got, want, what in zip(ours, reference, ("values", "gradients")):
      _assert_same_bits(got, want, f"{channels} channels, {what}")
    y = np.asarray(ours[0])[0, 0, :, 0]
    assert np.isnan(y[:4]).all() and y[4] == -np.inf and y[10] == 0 and not np.signbit(y[10])


def test_one_workspace_byte_a_pooled_value_and_float32_nhwc_only():
  for shape in [(128, 64, 64, 12), (128, 32, 32, 12), (128, 16, 16, 12), (128, 8, 8, 12), (1, 8, 8, 12)]:
    assert onednn_pool.workspace_bytes(*shape) == shape[0] * shape[1] // 2 * shape[2] // 2 * shape[3]
  x = jnp.zeros((3, 8, 6, 5), jnp.float32)
  y, workspace = jax.jit(onednn_pool.forward_with_workspace)(x)
  assert y.shape == (3, 4, 3, 5) and workspace.shape == (onednn_pool.workspace_bytes(3, 8, 6, 5),)
  with pytest.raises(ValueError, match="float32 NHWC"):
    onednn_pool.max_pool_2x2(jnp.zeros((2, 4, 4), jnp.float32))


def _step_loss(net, conv, poisoned, kind="ce"):
  """The loss and gradients of one whole training step (kdjax.training.train.make_train_step, Adam) of `net` built
  as speed.conv=`conv` builds it, with one NaN in the kernel of the layer `poisoned` (of the teacher for a
  student kd step)."""
  config = config_lib.default_config()
  config.speed.conv = conv
  model = config_nets.from_config(net, 10, config)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
  teacher, teacher_params = None, None
  if kind == "kd":
    teacher = config_nets.from_config("teacher", 10, config)
    teacher_params = models.init_params(teacher, jax.random.PRNGKey(1), (32, 32, 3))
  target = teacher_params if kind == "kd" else params
  target[poisoned]["kernel"] = target[poisoned]["kernel"].at[1, 1, 0, 0].set(jnp.nan)
  optimizer = optim.make_optimizer(optim.OptimizerConfig(**config.optimizer), 10)
  step = jax.jit(train.make_train_step(train.StepConfig(kind), model, optimizer, jnp.full(3, 0.5),
                                       jnp.full(3, 0.25), teacher=teacher))
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  state, metrics = step(train.create_state(params, optimizer, teacher_params=teacher_params),
                        {"image": images, "label": np.arange(4) % 10})
  hlo = step.lower(train.create_state(params, optimizer, teacher_params=teacher_params),
                   {"image": images, "label": np.arange(4) % 10}).as_text()
  return float(metrics["loss"]), state.params, hlo


@pytest.mark.parametrize("net, poisoned, kind", [
    ("student", "conv1", "ce"), pytest.param("teacher", "conv6", "ce", marks=pytest.mark.slow),   # the 12-conv net
    ("student", "conv6", "kd")])   # a NaN teacher teaching: kl_per_example keeps its NaN probabilities
def test_a_nan_weight_gives_a_non_finite_step_on_both_conv_paths(net, poisoned, kind):
  """One NaN in the student's conv1 kernel, or the teacher's conv6 (trained by CE, or teaching a KD step): the
  step's loss and the updated parameters are non-finite with speed.conv onednn as with xla (the issue: 6.1e36 and
  finite parameters on the oneDNN path, as its pool turned the all-NaN windows into -3.4e38)."""
  for conv in ("onednn", "xla"):
    loss, params, hlo = _step_loss(net, conv, poisoned, kind)
    assert ("kdjax_onednn_pool_forward" in hlo) == (conv == "onednn"), conv
    assert not np.isfinite(loss), (conv, loss)
    assert not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params)), conv


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
  assert config_nets.describe(config)["student"]["why"].endswith("; 2x2 max-pools in the oneDNN extension too")
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

