"""parity/speed.py: the benchmark's PyTorch side (the original's loops on kdjax's inputs, its ops alone)."""

import numpy as np
import torch

from kdjax.tools.benchmark import steps
from parity import harness
from parity import reference
from parity import speed


def test_channels_last_runs_the_seeds_view_and_computes_the_same(one_torch_thread):
  torch.manual_seed(0)
  net = reference.TeacherNet(10, 32)
  images = torch.randn(2, 3, 32, 32)
  expected = net(images)
  converted = speed.channels_last(net)
  logits = converted(images.contiguous(memory_format=torch.channels_last))
  torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_op_seconds_times_pytorch_on_the_profiles_ops(one_torch_thread):
  conv = {"op": "conv weight grad", "shape": (2, 8, 8, 12), "cout": 12, "layers": [2], "flops": 1}
  assert speed.op_seconds(conv, 10, 1, [1])["torch_cl"] > 0
  forward, backward = speed.op_seconds({"op": "pool", "shape": (2, 8, 8, 12), "layers": [3]}, 10, 1, [1])["torch_cl"]
  assert forward > 0 and backward > 0
  assert speed.op_seconds({"op": "Adam update", "shape": None, "layers": ["all"]}, 10, 1, [1]) == {}


def test_a_torch_step_trains_on_kdjaxs_exact_inputs(one_torch_thread, monkeypatch):
  """torch_step feeds the loop kdjax's model inputs (harness.model_inputs: data.normalize's table), NCHW."""
  batch = steps.random_batch(4, 16, 10)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  seen = []
  monkeypatch.setattr(reference, "train_ce", lambda model, optimizer, epochs, **kw: seen.extend(epochs[0]))
  speed.torch_step("student_ce", batch["image"], batch["label"], mean, std, 10, 1, False)(2)
  x, y = seen[0]
  assert len(seen) == 2 and x.shape == (4, 3, 16, 16)
  np.testing.assert_array_equal(x.numpy(), harness.model_inputs(batch["image"], mean, std).transpose(0, 3, 1, 2))
  np.testing.assert_array_equal(y.numpy(), batch["label"])
