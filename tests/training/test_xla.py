"""The speed switches: config.speed and kdjax.training.xla's per-compile options (the pool and the cached teacher logits
have their bit-for-bit tests in nets/test_pooling.py and training/test_train.py)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.config import validation as config_validation
from kdjax import errors
from kdjax.config import defaults as config_lib
from kdjax.training import losses
from kdjax.nets import models
from kdjax.training import xla
from tests.conftest import tiny_config

pytestmark = pytest.mark.optimized   # checks what XLA's optimising compile makes of the step

on_cpu = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the option is XLA:CPU's")


def test_bad_speed_pool_names_its_field():
  # (The booleans cannot hold anything else: ConfigDict refuses a value of another type on assignment.)
  with pytest.raises(errors.ConfigError, match=r"^speed\.pool must be one of"):
    config_validation.validate(tiny_config(**{"speed.pool": "average"}))


def test_speed_defaults_are_on_and_valid():
  config = config_lib.default_config()
  config_validation.validate(config)
  assert config.speed.pool == "fast" and config.speed.cached_teacher_logits and config.speed.xla_cpu_options


def test_options_only_on_cpu_and_only_when_enabled():
  assert xla.compiler_options(False) is None
  assert xla.compiler_options(True, backend="gpu") is None
  if jax.default_backend() == "cpu":
    assert xla.compiler_options(True) == xla.CPU_OPTIONS


def _teacher_grads(options):
  model = models.teacher_net(10)
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  rng = np.random.default_rng(0)
  # Batch 32: XLA:CPU hands a weight-gradient convolution to YNNPACK only above a size (not at batch 8).
  images = jnp.asarray(rng.standard_normal((32, 16, 16, 3)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 32))
  loss = lambda p: losses.cross_entropy(model.apply({"params": p}, images), labels)
  forward = jax.jit(lambda p: model.apply({"params": p}, images), compiler_options=options)
  grad = jax.jit(jax.grad(loss), compiler_options=options)
  return forward(params), grad(params), grad.lower(params).compile().as_text()


@on_cpu
def test_option_moves_the_weight_gradient_convolutions_off_ynnpack_within_fp32_rounding():
  logits_on, grads_on, program_on = _teacher_grads(xla.compiler_options(True))
  logits_off, grads_off, program_off = _teacher_grads(None)
  # The compiled program changes: XLA's default sends the weight-gradient convolutions to YNNPACK; the
  # option keeps them in XLA (and every other library fusion as it was).
  fusions_on, fusions_off = xla.library_fusions(program_on), xla.library_fusions(program_off)
  assert fusions_off[("__ynn_fusion", "convolution")] > 0  # weight gradients (9 of 12 at this size)
  assert fusions_on[("__ynn_fusion", "convolution")] == 0 and " convolution(" in program_on
  assert fusions_on[("__ynn_fusion", "dot")] == fusions_off[("__ynn_fusion", "dot")] > 0
  # The forward's convolutions were never YNNPACK's: the logits are the same; gradients within fp32 rounding.
  np.testing.assert_allclose(logits_on, logits_off, rtol=1e-5, atol=1e-5 * float(np.abs(logits_off).max()))
  for on, off in zip(jax.tree_util.tree_leaves(grads_on), jax.tree_util.tree_leaves(grads_off)):
    np.testing.assert_allclose(on, off, rtol=1e-5, atol=1e-5 * float(np.abs(off).max()))


@on_cpu
def test_rejected_options_fall_back_to_xla_defaults_with_a_warning(monkeypatch):
  monkeypatch.setattr(xla, "CPU_OPTIONS", {xla.YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_NOT_A_KIND"})
  with pytest.warns(RuntimeWarning, match="rejects"):
    assert xla.compiler_options(True) is None
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert xla.compiler_options(True) is None  # probed once per process


def test_jit_applies_the_options():
  fn = xla.jit(lambda x: x * 2, True)
  assert float(fn(jnp.float32(3))) == 6.0
