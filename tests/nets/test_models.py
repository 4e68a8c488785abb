import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.nets import models


@pytest.mark.parametrize("factory,expected", [(models.teacher_net, 53_324), (models.student_net, 42_860)])
def test_parameter_counts_at_200_classes(factory, expected):
  params = models.init_params(factory(200), jax.random.PRNGKey(0), (64, 64, 3))
  assert models.param_count(params) == expected


@pytest.mark.parametrize("factory,layers", [(models.teacher_net, 12), (models.student_net, 4)])
def test_layer_names_shapes_and_logits(factory, layers):
  model = factory(200)
  params = models.init_params(model, jax.random.PRNGKey(0), (64, 64, 3))
  assert model.layer_names == tuple(f"conv{i}" for i in range(1, layers + 1)) + ("fc",)
  assert set(params) == set(model.layer_names)
  assert params["conv1"]["kernel"].shape == (3, 3, 3, 12)  # HWIO
  assert params[f"conv{layers}"]["kernel"].shape == (3, 3, 12, 12)
  assert params["fc"]["kernel"].shape == (12 * 4 * 4, 200)  # both nets flatten 192 features at 64x64
  logits = model.apply({"params": params}, jnp.ones((2, 64, 64, 3)))
  assert logits.shape == (2, 200) and logits.dtype == jnp.float32


def test_head_follows_input_size_and_classes():
  model = models.teacher_net(10)
  params = models.init_params(model, jax.random.PRNGKey(0), (32, 32, 3))
  assert params["fc"]["kernel"].shape == (12 * 2 * 2, 10)


def test_pytorch_init_is_uniform_within_one_over_sqrt_fan_in():
  params = models.init_params(models.teacher_net(200), jax.random.PRNGKey(1), (64, 64, 3))
  for layer, fan_in in (("conv1", 27), ("conv2", 108), ("fc", 192)):
    bound = 1 / np.sqrt(fan_in)
    for name in ("kernel", "bias"):
      values = np.asarray(params[layer][name])
      assert np.abs(values).max() <= bound
      assert np.abs(values).max() > 0.8 * bound  # spread over the whole range, biases included


def test_lecun_normal_init_has_zero_biases():
  params = models.init_params(models.student_net(10, init="lecun_normal"), jax.random.PRNGKey(0),
                              (16, 16, 3))
  assert all(np.all(params[layer]["bias"] == 0) for layer in params)
  assert np.asarray(params["conv2"]["kernel"]).std() == pytest.approx(1 / np.sqrt(108), rel=0.15)


def test_he_normal_keeps_a_relu_nets_second_moment_through_its_convs():
  """Var(w) = 2/fan_in: a conv + ReLU leaves E[x^2] where it was, so the teacher's 12th conv sees the input's scale;
  LeCun-normal halves it at every conv (2^-12 after twelve)."""
  params = models.init_params(models.teacher_net(10, init="he_normal"), jax.random.PRNGKey(0), (16, 16, 3))
  assert all(np.all(params[layer]["bias"] == 0) for layer in params)
  assert np.asarray(params["conv2"]["kernel"]).std() == pytest.approx(np.sqrt(2 / 108), rel=0.15)
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 16, 16, 12))
  for layer in [f"conv{i}" for i in range(2, 5)]:
    x = jax.nn.relu(jax.lax.conv_general_dilated(x, params[layer]["kernel"], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC")))
  # Interior pixels see 108 inputs; the border (zero padding) fewer, so allow a margin below 1.
  assert 0.5 < float(jnp.mean(x[:, 4:-4, 4:-4] ** 2)) < 2.0


def test_activation_option_changes_the_function():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  linear, relu = models.student_net(10), models.student_net(10, activation="relu")
  params = models.init_params(linear, jax.random.PRNGKey(0), (16, 16, 3))
  logits_linear = linear.apply({"params": params}, x)
  logits_relu = relu.apply({"params": params}, x)
  assert not np.allclose(logits_linear, logits_relu, atol=1e-4)


def test_flops_per_image():
  # conv1 at 64x64: 2*64*64*3*12*9; conv2 at 32x32 ...; fc: 2*192*200.
  student = 2 * 9 * 12 * (64 * 64 * 3 + 32 * 32 * 12 + 16 * 16 * 12 + 8 * 8 * 12) + 2 * 192 * 200
  assert models.flops_per_image(models.student_net(200), (64, 64, 3)) == student
  teacher = models.flops_per_image(models.teacher_net(200), (64, 64, 3))
  assert teacher == 2 * 9 * 12 * (64 * 64 * (3 + 12 + 12) + 32 * 32 * 36 + 16 * 16 * 36 + 8 * 8 * 36) \
      + 2 * 192 * 200


@pytest.mark.parametrize("shape, num_classes", [((32, 32, 3), 10), ((64, 64, 3), 200)])
def test_models_follow_input_size_and_classes(shape, num_classes):
  for factory in models.MODEL_FACTORIES.values():
    net = factory(num_classes, "none", "pytorch")
    params = models.init_params(net, jax.random.PRNGKey(0), shape)
    logits = net.apply({"params": params}, np.zeros((2, *shape), np.float32))
    assert logits.shape == (2, num_classes)
