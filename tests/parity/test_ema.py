"""kdjax.training.ema against PyTorch: the original's zip/shape-match EMA and the student-weights EMA (timm's ModelEmaV2)."""

import jax
import numpy as np
import pytest
import torch

from kdjax.training import ema
from kdjax.nets import models
from parity import convert
from parity import reference

# Not `optimized` (tests/conftest.py): computed op by op (nothing jitted), with no program for XLA's
# optimisations to change.
pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

IMAGE_SIZE = 16
ALPHA = 0.9  # a large (1 - alpha) so that every updated tensor visibly changes


def _pair(student_features, student_pools, teacher_features, teacher_pools):
  """(Flax student, params, PyTorch student, Flax teacher, params, PyTorch teacher) with equal weights."""
  nets = []
  for seed, (features, pools) in enumerate([(student_features, student_pools), (teacher_features, teacher_pools)]):
    flax_model = models.ConvNet(conv_features=features, pool_after=pools, num_classes=10)
    params = convert.to_numpy_tree(
        models.init_params(flax_model, jax.random.PRNGKey(seed), (IMAGE_SIZE, IMAGE_SIZE, 3)))
    torch_model = reference.ConvNet(features, pools, 10, IMAGE_SIZE)
    torch_model.load_state_dict(convert.to_state_dict(params), strict=True)
    nets += [flax_model, params, torch_model]
  return nets


CASES = {
    # Our nets: student conv1..conv4 meet teacher conv1..conv4; the student's fc meets teacher conv5 (skipped).
    "ours": (((12,) * 4, (1, 2, 3, 4), (12,) * 12, (3, 6, 9, 12)),
             {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "conv3.weight", "conv3.bias",
              "conv4.weight", "conv4.bias"}),
    # Shapes mismatch in the middle (student conv2 has 8 channels): conv2.*, conv3.weight skipped, conv3.bias
    # (12,) matches again, conv4 matches, fc meets conv5 and is skipped.
    "mismatch_in_middle": (((12, 8, 12, 12), (1, 2, 3, 4), (12,) * 12, (3, 6, 9, 12)),
                           {"conv1.weight", "conv1.bias", "conv3.bias", "conv4.weight", "conv4.bias"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_seed_ema_updates_the_tensors_and_values_pytorch_does(case):
  shapes, expected = CASES[case]
  s_flax, s_params, s_torch, t_flax, t_params, t_torch = _pair(*shapes)
  before = {key: value.clone() for key, value in t_torch.state_dict().items()}
  reference.seed_ema_update(s_torch, t_torch, ALPHA)
  after = t_torch.state_dict()
  torch_changed = {key for key in before if not torch.equal(before[key], after[key])}
  assert torch_changed == expected  # the reference itself does what the original's loop does

  pairs = ema.torch_zip_pairs(s_params, s_flax.layer_names, t_params, t_flax.layer_names)
  updated = ema.pull_teacher_toward_student(t_params, s_params, pairs, ALPHA)
  ours = convert.to_state_dict(convert.to_numpy_tree(updated))
  kdjax_changed = {key for key in before if not torch.equal(before[key], ours[key])}
  assert kdjax_changed == expected
  for key in before:
    # alpha*t + (1-alpha)*s in fp32 on both sides: the same two roundings, at most an ulp apart.
    np.testing.assert_allclose(ours[key].numpy(), after[key].numpy(), rtol=1e-6, atol=1e-8, err_msg=key)


def test_sorted_key_pairing_would_differ():
  """The trap the core avoids: jax.tree_util order (conv1, conv10, conv11, ...) pairs other teacher tensors."""
  (_, expected) = CASES["ours"]
  s_flax, s_params, _, t_flax, t_params, _ = _pair(*CASES["ours"][0])
  sorted_teacher = [path for path in ema.torch_order(t_params, sorted(t_flax.layer_names))]
  naive = {f"{layer}.{'weight' if name == 'kernel' else name}"
           for (_, (layer, name)) in zip(ema.torch_order(s_params, s_flax.layer_names), sorted_teacher)}
  assert naive != expected
  pairs = ema.torch_zip_pairs(s_params, s_flax.layer_names, t_params, t_flax.layer_names)
  assert [s for s, _ in pairs] == [t for _, t in pairs]  # conv_i <-> conv_i


def test_student_weights_ema_matches_timm_model_ema():
  flax_model = models.student_net(10)
  params = convert.to_numpy_tree(models.init_params(flax_model, jax.random.PRNGKey(0), (IMAGE_SIZE,) * 2 + (3,)))
  torch_model = convert.load_into(reference.StudentNet(10, IMAGE_SIZE), params)
  torch_ema = reference.StudentWeightsEMA(torch_model)
  average = params
  rng = np.random.default_rng(0)
  for count in range(1, 6):
    params = jax.tree_util.tree_map(lambda p: p + rng.standard_normal(p.shape).astype(np.float32) * 0.01, params)
    convert.load_into(torch_model, params)
    decay = ema.warmup_decay(0.99, count)
    assert float(decay) == pytest.approx(reference.warmup_decay(0.99, count), rel=1e-7)
    average = ema.polyak_update(average, params, decay)
    torch_ema.update(torch_model, reference.warmup_decay(0.99, count))
  ours = convert.to_state_dict(convert.to_numpy_tree(average))
  for key, value in torch_ema.module.state_dict().items():
    np.testing.assert_allclose(ours[key].numpy(), value.numpy(), rtol=1e-6, atol=1e-8, err_msg=key)
