"""data.normalize is a table lookup: the same float32 inputs in every program (eager, jitted, fused with a conv,
float64), equal to the float64 formula rounded once; evaluate.predict and the parity harness see those bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data as data_lib
from kdjax.training import evaluate
from kdjax.nets import models
from parity import harness

pytestmark = pytest.mark.optimized   # float64 / published references

# Constants whose float32 formula (x/255 - mean)/std rounds differently from the float64 one on many pixels.
MEAN = np.array([0.4314, 0.4418, 0.3021], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


def _images(count=8, size=16, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _conv(inputs, kernel):
  return jax.lax.conv_general_dilated(inputs, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_table_is_the_float64_formula_rounded_once():
  table = data_lib.normalization_table(MEAN, STD)
  assert table.shape == (256, 3) and table.dtype == np.float32
  pixels = np.arange(256, dtype=np.float64)[:, None]
  expected = ((pixels / 255.0 - MEAN.astype(np.float64)) / STD.astype(np.float64)).astype(np.float32)
  np.testing.assert_array_equal(table, expected)
  # Not vacuous: float32 arithmetic (three roundings) differs from it on some entries.
  float32_formula = (np.arange(256, dtype=np.float32)[:, None] / np.float32(255) - MEAN) / STD
  assert np.any(float32_formula != table)


def test_normalize_is_the_table_lookup_bit_for_bit():
  images = _images()
  table = data_lib.normalization_table(MEAN, STD)
  lookup = table[images, np.arange(3)]
  for mean, std in [(MEAN, STD), (jnp.asarray(MEAN), jnp.asarray(STD))]:  # numpy or concrete jax constants
    eager = np.asarray(data_lib.normalize(images, mean, std))
    assert eager.dtype == np.float32
    np.testing.assert_array_equal(eager, lookup)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda x: data_lib.normalize(x, mean, std))(images)), lookup)


def test_every_program_sees_the_same_inputs():
  """Closed over in one jit, the table as a jit argument in another, fused into a conv, in float32 and float64:
  the conv sees the bits of the eager lookup (the formula, rounded inside each fusion, does not guarantee it)."""
  images = _images(seed=1)
  kernel = np.random.default_rng(2).standard_normal((3, 3, 3, 12)).astype(np.float32)
  inputs = np.asarray(data_lib.normalize(images, MEAN, STD))
  table = jnp.asarray(data_lib.normalization_table(MEAN, STD))
  as_argument = jax.jit(lambda x, t: t[x.astype(jnp.int32), jnp.arange(3)])(images, table)
  np.testing.assert_array_equal(np.asarray(as_argument), inputs)
  fused = jax.jit(lambda x: _conv(data_lib.normalize(x, MEAN, STD), kernel))(images)
  np.testing.assert_array_equal(np.asarray(fused), np.asarray(jax.jit(_conv)(inputs, kernel)))
  with jax.enable_x64(True):
    kernel64 = kernel.astype(np.float64)
    fused64 = jax.jit(lambda x: _conv(data_lib.normalize(x, MEAN, STD).astype(jnp.float64), kernel64))(images)
    separate64 = jax.jit(_conv)(inputs.astype(np.float64), kernel64)
    assert fused64.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(fused64), np.asarray(separate64))


def test_traced_constants_are_refused():
  with pytest.raises(TypeError, match="mean is a traced value"):
    jax.jit(lambda x, mean, std: data_lib.normalize(x, mean, std))(_images(), MEAN, STD)
  with pytest.raises(TypeError, match="uint8"):
    data_lib.normalize(_images().astype(np.float32), MEAN, STD)


def test_predict_and_the_harness_use_those_inputs():
  images = _images(count=10)
  model = models.student_net(10)
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  inputs = harness.model_inputs(images, MEAN, STD)
  np.testing.assert_array_equal(inputs, np.asarray(data_lib.normalize(images, MEAN, STD)))
  np.testing.assert_array_equal(harness.model_inputs(images, MEAN, STD, "float64"), inputs.astype(np.float64))
  logits = evaluate.predict(model, params, images, MEAN, STD, batch_size=4)  # padded last batch
  expected = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, inputs[:4]))
  np.testing.assert_array_equal(logits[:4], expected)
  # Another normalisation is another compiled function, not a stale cache entry.
  other = evaluate.predict(model, params, images, MEAN + 0.1, STD, batch_size=4)
  assert np.max(np.abs(other - logits)) > 0
