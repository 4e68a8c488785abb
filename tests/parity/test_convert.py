"""parity.convert: exact round trips both ways, and the layouts it maps (HWIO/OIHW, Dense/Linear, H*W*C/C*H*W)."""

import jax
import numpy as np
import pytest
import torch

from kdjax.nets import models
from parity import convert
from parity import reference

# Not `optimized` (tests/conftest.py): computed op by op (nothing jitted), with no program for XLA's
# optimisations to change.


def _flax_params(net: str, num_classes: int, image_size: int, seed: int = 0) -> dict:
  model = models.MODEL_FACTORIES[net](num_classes)
  params = models.init_params(model, jax.random.PRNGKey(seed), (image_size, image_size, 3))
  return convert.to_numpy_tree(params)


@pytest.mark.parametrize("net", ["teacher", "student"])
@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_flax_to_torch_to_flax_is_exact(net, image_size):
  params = _flax_params(net, 10, image_size)
  back = convert.from_state_dict(convert.to_state_dict(params))
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("net", ["teacher", "student"])
def test_torch_to_flax_to_torch_is_exact(net):
  torch.manual_seed(0)
  model = reference.NETS[net](num_classes=7, image_size=32)  # PyTorch's own init
  state = model.state_dict()
  back = convert.to_state_dict(convert.from_state_dict(state))
  assert list(back) == list(state)  # the original's keys, in registration order
  for key in state:
    assert torch.equal(back[key], state[key]), key
  model.load_state_dict(back, strict=True)


def test_state_dict_keys_and_shapes_are_the_seeds():
  state = convert.to_state_dict(_flax_params("teacher", 200, 64))
  expected = [f"conv{i}.{name}" for i in range(1, 13) for name in ("weight", "bias")] + ["fc.weight", "fc.bias"]
  assert list(state) == expected  # conv1, conv2, ..., conv12: definition order, not sorted (conv10 after conv9)
  assert tuple(state["conv1.weight"].shape) == (12, 3, 3, 3)      # OIHW
  assert tuple(state["conv2.weight"].shape) == (12, 12, 3, 3)
  assert tuple(state["fc.weight"].shape) == (200, 12 * 4 * 4)     # Linear (out, in)
  assert sum(value.numel() for value in state.values()) == 53_324  # the core's count at 200 classes
  reference.TeacherNet().load_state_dict(state, strict=True)      # the original's defaults: 200 classes, 64x64
  student = convert.to_state_dict(_flax_params("student", 200, 64))
  assert sum(value.numel() for value in student.values()) == 42_860
  reference.StudentNet().load_state_dict(student, strict=True)


def test_conv_kernel_element_mapping():
  kernel = np.arange(3 * 3 * 2 * 5, dtype=np.float32).reshape(3, 3, 2, 5)  # HWIO
  weight = convert.conv_kernel_to_torch(kernel)
  assert weight.shape == (5, 2, 3, 3)
  for h, w, i, o in [(0, 1, 1, 4), (2, 0, 0, 3), (1, 2, 1, 0)]:
    assert weight[o, i, h, w] == kernel[h, w, i, o]


def test_fc_rows_follow_the_flatten_orders():
  height, width, channels, out = 2, 3, 4, 5
  kernel = np.random.default_rng(0).standard_normal((height * width * channels, out)).astype(np.float32)
  weight = convert.fc_kernel_to_torch(kernel, (height, width, channels))
  assert weight.shape == (out, channels * height * width)
  for h, w, c in [(0, 0, 1), (1, 2, 3), (1, 0, 2)]:
    flax_row = h * width * channels + w * channels + c   # NHWC reshape
    torch_col = c * height * width + h * width + w       # NCHW view
    np.testing.assert_array_equal(weight[:, torch_col], kernel[flax_row, :])
  # The same features give the same outputs in both flatten orders.
  features_nhwc = np.random.default_rng(1).standard_normal((3, height, width, channels)).astype(np.float32)
  flax_out = features_nhwc.reshape(3, -1) @ kernel
  torch_out = np.transpose(features_nhwc, (0, 3, 1, 2)).reshape(3, -1) @ weight.T
  np.testing.assert_allclose(flax_out, torch_out, rtol=1e-6, atol=1e-6)


def test_images_to_torch_is_nchw():
  images = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
  tensor = convert.images_to_torch(images)
  assert tuple(tensor.shape) == (2, 3, 4, 5) and tensor.is_contiguous()
  assert tensor[1, 2, 3, 4].item() == images[1, 3, 4, 2]


def test_layer_names_are_numeric_not_sorted():
  params = {f"conv{i}": {} for i in (1, 10, 11, 12, 2, 3, 4, 5, 6, 7, 8, 9)} | {"fc": {}}
  assert convert.layer_names(params) == tuple(f"conv{i}" for i in range(1, 13)) + ("fc",)
  with pytest.raises(ValueError, match="conv1..convN and fc"):
    convert.layer_names({"conv1": {}, "dense": {}})
