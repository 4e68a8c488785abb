import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax.training import ema
from kdjax.nets import models
from kdjax.training import train

SHAPE = (16, 16, 3)


def _params(model, seed):
  return models.init_params(model, jax.random.PRNGKey(seed), SHAPE)


def test_torch_order_is_definition_order_not_sorted_keys():
  teacher = models.teacher_net(10)
  params = _params(teacher, 0)
  order = ema.torch_order(params, teacher.layer_names)
  assert order[:4] == [("conv1", "kernel"), ("conv1", "bias"), ("conv2", "kernel"), ("conv2", "bias")]
  assert order[-2:] == [("fc", "kernel"), ("fc", "bias")]
  # The trap: jax.tree_util flattens dicts in sorted key order.
  sorted_layers = [path[0].key for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]][::2]
  assert sorted_layers[:3] == ["conv1", "conv10", "conv11"]
  assert [layer for layer, _ in order][::2] != sorted_layers


def test_our_pair_updates_teacher_conv1_to_conv4_only():
  student, teacher = models.student_net(10), models.teacher_net(10)
  pairs = ema.torch_zip_pairs(_params(student, 1), student.layer_names, _params(teacher, 0), teacher.layer_names)
  expected = [((f"conv{i}", name), (f"conv{i}", name)) for i in range(1, 5) for name in ("kernel", "bias")]
  assert pairs == expected  # student fc meets teacher conv5: shapes differ, skipped; zip stops there.


def test_shape_match_follows_zip_not_names():
  # With 12 classes the student's fc.bias (12,) meets the teacher's conv5.bias (12,): PyTorch's zip
  # pairs them by position and the shapes match, so the seed updates conv5.bias from the student's fc.bias.
  student, teacher = models.student_net(12), models.teacher_net(12)
  pairs = ema.torch_zip_pairs(_params(student, 1), student.layer_names, _params(teacher, 0), teacher.layer_names)
  assert pairs[-1] == (("fc", "bias"), ("conv5", "bias"))
  assert len(pairs) == 9


def test_mismatch_in_the_middle_skips_only_those_tensors():
  student = models.ConvNet(conv_features=(12, 8, 12), pool_after=(1, 2, 3), num_classes=10)
  teacher = models.ConvNet(conv_features=(12, 12, 12), pool_after=(1, 2, 3), num_classes=10)
  s_params, t_params = _params(student, 1), _params(teacher, 0)
  pairs = ema.torch_zip_pairs(s_params, student.layer_names, t_params, teacher.layer_names)
  # conv2 (3,3,12,8)/(8,) vs (3,3,12,12)/(12,): skipped; conv3 kernel (3,3,8,12) skipped, conv3 bias kept.
  assert [t for _, t in pairs] == [("conv1", "kernel"), ("conv1", "bias"), ("conv3", "bias"),
                                   ("fc", "kernel"), ("fc", "bias")]
  alpha = 0.9
  updated = ema.pull_teacher_toward_student(t_params, s_params, pairs, alpha)
  for layer in teacher.layer_names:
    for name in ("kernel", "bias"):
      if (layer, name) in [t for _, t in pairs]:
        want = alpha * t_params[layer][name] + (1 - alpha) * s_params[layer][name]
      else:
        want = t_params[layer][name]
      np.testing.assert_allclose(updated[layer][name], want, rtol=1e-6, atol=1e-7)


def test_seed_update_is_incremental_update():
  student, teacher = models.student_net(10), models.teacher_net(10)
  s_params, t_params = _params(student, 1), _params(teacher, 0)
  pairs = ema.torch_zip_pairs(s_params, student.layer_names, t_params, teacher.layer_names)
  updated = ema.pull_teacher_toward_student(t_params, s_params, pairs, 0.99)
  want = optax.incremental_update(s_params["conv2"], t_params["conv2"], 0.01)
  np.testing.assert_allclose(updated["conv2"]["kernel"], want["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(updated["conv7"]["kernel"], t_params["conv7"]["kernel"])


def test_warmup_decay():
  assert float(ema.warmup_decay(0.999, jnp.float32(1))) == pytest.approx(0.5)
  assert float(ema.warmup_decay(0.999, jnp.float32(3))) == pytest.approx(0.75)
  assert float(ema.warmup_decay(0.9, jnp.float32(1000))) == pytest.approx(0.9)


def test_kd_ema_step_uses_pre_step_student_and_pre_update_teacher():
  student, teacher = models.student_net(10), models.teacher_net(10)
  s_params, t_params = _params(student, 1), _params(teacher, 0)
  pairs = ema.torch_zip_pairs(s_params, student.layer_names, t_params, teacher.layer_names)
  optimizer = optax.sgd(0.1)
  mean, std = jnp.zeros(3), jnp.ones(3)
  alpha, temperature = 0.5, 2.0
  step = train.make_train_step(train.StepConfig("kd_ema", temperature=temperature, teacher_decay=alpha),
                               student, optimizer, mean, std, teacher=teacher, teacher_pairs=pairs)
  batch = {"image": jax.random.randint(jax.random.PRNGKey(2), (4, *SHAPE), 0, 256).astype(jnp.uint8),
           "label": jnp.arange(4, dtype=jnp.int32)}
  state = train.create_state(s_params, optimizer, teacher_params=t_params)
  new_state, metrics = jax.jit(step)(state, batch)

  images = batch["image"].astype(jnp.float32) / 255.0
  # The loss is taken against the teacher's logits *before* its EMA update ... (the reference jitted: op by op,
  # every primitive compiled alone took most of this test's time)
  from kdjax.training import losses
  teacher_logits = jax.jit(teacher.apply)({"params": t_params}, images)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: losses.distill_kl(student.apply({"params": p}, images), teacher_logits, temperature)))(s_params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  # ... the teacher moves toward the student's *pre-step* weights ...
  np.testing.assert_allclose(new_state.teacher_params["conv1"]["kernel"],
                             alpha * t_params["conv1"]["kernel"] + (1 - alpha) * s_params["conv1"]["kernel"],
                             rtol=1e-6)
  # ... and the student takes its plain gradient step.
  np.testing.assert_allclose(new_state.params["conv1"]["kernel"],
                             s_params["conv1"]["kernel"] - 0.1 * grads["conv1"]["kernel"], rtol=1e-5, atol=1e-7)


def test_student_weights_ema_follows_the_post_step_student():
  student = models.student_net(10)
  params = _params(student, 1)
  optimizer = optax.sgd(0.1)
  step = jax.jit(train.make_train_step(train.StepConfig("ce", student_decay=0.75), student, optimizer,
                                       jnp.zeros(3), jnp.ones(3)))
  batch = {"image": jnp.full((4, *SHAPE), 128, jnp.uint8), "label": jnp.arange(4, dtype=jnp.int32)}
  state = train.create_state(params, optimizer, keep_student_ema=True)
  new_state, _ = step(state, batch)
  np.testing.assert_allclose(new_state.ema_params["fc"]["kernel"],
                             0.75 * params["fc"]["kernel"] + 0.25 * new_state.params["fc"]["kernel"],
                             rtol=1e-6)


# --- the interpolation (issue 30): the paired tensors at (1 - w)*teacher + w*student, evaluation-only ---------------

def test_interpolate_pairs_moves_exactly_the_original_pairs():
  """w = 0 is the teacher and w = 1 puts the student's values in the paired tensors (conv1..conv4), bit for bit;
  conv5..conv12 and fc stay the teacher's at every w; between, (1 - w)*teacher + w*student."""
  student, teacher = models.student_net(10), models.teacher_net(10)
  s_params, t_params = _params(student, 1), _params(teacher, 0)
  pairs = ema.torch_zip_pairs(s_params, student.layer_names, t_params, teacher.layer_names)
  at_zero = ema.interpolate_pairs(t_params, s_params, pairs, 0.0)
  at_one = ema.interpolate_pairs(t_params, s_params, pairs, 1.0)
  between = ema.interpolate_pairs(t_params, s_params, pairs, 0.3)
  paired = {t_path for _, t_path in pairs}
  for layer in teacher.layer_names:
    for name in ("kernel", "bias"):
      teacher_value = np.asarray(t_params[layer][name])
      np.testing.assert_array_equal(np.asarray(at_zero[layer][name]), teacher_value)
      if (layer, name) in paired:
        student_value = np.asarray(s_params[layer][name])
        np.testing.assert_array_equal(np.asarray(at_one[layer][name]), student_value)
        np.testing.assert_allclose(np.asarray(between[layer][name], np.float64),
                                   0.7 * teacher_value.astype(np.float64) + 0.3 * student_value, rtol=0, atol=1e-6)
      else:
        np.testing.assert_array_equal(np.asarray(at_one[layer][name]), teacher_value)
        np.testing.assert_array_equal(np.asarray(between[layer][name]), teacher_value)
  assert sorted({layer for layer, _ in paired}) == ["conv1", "conv2", "conv3", "conv4"]


def test_interpolate_pairs_same_architecture_at_one_is_the_student():
  """A teacher of the student's own architecture (the mean teacher's): every tensor pairs, so w = 1 is the student."""
  student = models.student_net(10)
  a, b = _params(student, 1), _params(student, 2)
  pairs = ema.torch_zip_pairs(a, student.layer_names, b, student.layer_names)
  assert len(pairs) == 2 * len(student.layer_names)
  mixed = ema.interpolate_pairs(b, a, pairs, 1.0)
  for leaf, expected in zip(jax.tree_util.tree_leaves(mixed), jax.tree_util.tree_leaves(a)):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))


@pytest.mark.parametrize("weight", [-0.1, 1.5])
def test_interpolate_pairs_refuses_a_weight_outside_0_1(weight):
  with pytest.raises(ValueError, match="interpolation weight"):
    ema.interpolate_pairs({}, {}, [], weight)


def test_student_share_is_one_minus_the_trained_teachers_weight():
  """1 - alpha^k, equal to the EMA applied k times to a teacher of 0 and a student of 1; with the warm-up the
  running mean: 1 - 1/(k + 1) while it is below alpha."""
  teacher = jnp.zeros(())
  for _ in range(230):
    teacher = optax.incremental_update(jnp.ones(()), teacher, 1.0 - 0.999)
  assert ema.student_share(0.999, 230) == pytest.approx(float(teacher), abs=1e-5)
  assert ema.student_share(0.999, 230) == pytest.approx(0.2055578, abs=1e-7)
  assert ema.student_share(0.999, 0) == 0.0
  assert ema.student_share(0.999, 4, warmup=True) == pytest.approx(1 - 1 / 5)
  assert ema.student_share(0.5, 3, warmup=True) == pytest.approx(1 - 0.5 * 0.5 * 0.5)
