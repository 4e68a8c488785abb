"""Forward parity: the same weights give the same logits in kdjax (Flax) and the PyTorch reference."""

import jax
import numpy as np
import pytest
import torch

from kdjax.nets import models
from parity import convert
from parity import reference

# Not `optimized` (tests/conftest.py): computed op by op (nothing jitted), with no program for XLA's
# optimisations to change.
pytestmark = [pytest.mark.usefixtures("highest_matmul_precision")]

FORWARD_ATOL = 1e-5  # the bound for fp32 on CPU (parity/tolerances.py); measured ~1e-7


@pytest.mark.parametrize("net", ["teacher", "student"])
@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("init", ["pytorch", "lecun_normal"])
@pytest.mark.parametrize("image_size,count", [(16, 16), (64, 4)])
def test_same_weights_same_logits(net, activation, init, image_size, count):
  flax_model = models.MODEL_FACTORIES[net](10, activation, init)
  params = models.init_params(flax_model, jax.random.PRNGKey(1), (image_size, image_size, 3))
  images = np.random.default_rng(2).standard_normal((count, image_size, image_size, 3)).astype(np.float32)
  flax_logits = np.asarray(flax_model.apply({"params": params}, images))
  torch_model = convert.load_into(reference.NETS[net](10, image_size, activation), params)
  with torch.no_grad():
    torch_logits = torch_model(convert.images_to_torch(images)).numpy()
  assert np.max(np.abs(flax_logits - torch_logits)) <= FORWARD_ATOL
  if init == "lecun_normal":
    # Not vacuous: the logits depend on the input. (With PyTorch's init the original's activation-free teacher is
    # nearly constant in its input, ~1e-4, its deep activations being mostly bias.)
    assert np.ptp(flax_logits[:, 0]) > 100 * FORWARD_ATOL


def test_a_wrong_flatten_order_is_caught():
  """Without the fc row permutation the logits differ by far more than the tolerance."""
  flax_model = models.student_net(10)
  params = convert.to_numpy_tree(models.init_params(flax_model, jax.random.PRNGKey(0), (32, 32, 3)))
  images = np.random.default_rng(0).standard_normal((8, 32, 32, 3)).astype(np.float32)
  state = convert.to_state_dict(params)
  state["fc.weight"] = torch.from_numpy(np.ascontiguousarray(params["fc"]["kernel"].T))  # no permutation
  torch_model = reference.StudentNet(10, 32)
  torch_model.load_state_dict(state, strict=True)
  with torch.no_grad():
    wrong = torch_model(convert.images_to_torch(images)).numpy()
  assert np.max(np.abs(np.asarray(flax_model.apply({"params": params}, images)) - wrong)) > 1e-3


@pytest.mark.parametrize("net", ["teacher", "student"])
def test_reference_matches_core_layers_and_counts(net):
  flax_model = models.MODEL_FACTORIES[net](200)
  params = models.init_params(flax_model, jax.random.PRNGKey(0), (64, 64, 3))
  torch_model = reference.NETS[net]()
  names = [name for name, _ in torch_model.named_parameters()]
  assert names == [f"{layer}.{p}" for layer in flax_model.layer_names for p in ("weight", "bias")]
  assert sum(p.numel() for p in torch_model.parameters()) == models.param_count(params)
