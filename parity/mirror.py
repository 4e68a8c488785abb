"""The mirrored problem: the same training run transposed across the image diagonal, which each framework computes
with other roundings at every op. It is how parity.check measures the float32 noise floor (parity/tolerances.py).

Swapping the image axes H <-> W, each conv kernel's axes kh <-> kw, and the fc rows to match gives the same function:

  images     x'[n, h, w, c]     = x[n, w, h, c]
  conv       K'[i, j, ci, co]   = K[j, i, ci, co]          (HWIO; a 3x3 SAME conv commutes with the transpose)
  max-pool   2x2 windows are symmetric, so pool(x') = pool(x)'
  fc         W'[(h, w, c), :]   = W[(w, h, c), :]          (Flax rows in H*W*C order, square H = W)
  bias       unchanged

so conv'(x') = conv(x)' layer by layer and the logits are equal, as are the gradients (mirrored). Adam, SGD, both
EMAs and the original's shape-matched pairing are elementwise on tensors of unchanged shapes, so a whole training run
on the mirrored weights and images ends at the mirrored weights of the original run, exactly in real arithmetic.
In floating point it does not: every conv sums its 3x3 taps in another order, so every op rounds differently,
as two frameworks do. The mirrored run also takes each batch reversed (the batch sums of the loss and of the
weight gradients add in another order). Mirroring is its own inverse (H = W).
"""

import numpy as np

from parity import convert


def mirror_images(images: np.ndarray) -> np.ndarray:
  """NHWC [N, H, W, C] -> [N, W, H, C] (any dtype), contiguous."""
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"mirroring needs square images, got {images.shape[1]}x{images.shape[2]}")
  return np.ascontiguousarray(np.swapaxes(images, 1, 2))


def mirror_params(params) -> dict:
  """Flax params {layer: {kernel, bias}} -> the params of the mirrored problem (numpy, same shapes)."""
  params = convert.to_numpy_tree(params)
  height, width, channels = convert.fc_feature_shape(params)
  mirrored = {}
  for layer in convert.layer_names(params):
    kernel = params[layer]["kernel"]
    if layer == convert.FC:
      out = kernel.shape[1]
      kernel = kernel.reshape(height, width, channels, out).transpose(1, 0, 2, 3).reshape(-1, out)
    else:
      kernel = kernel.transpose(1, 0, 2, 3)
    mirrored[layer] = {"kernel": np.ascontiguousarray(kernel), "bias": params[layer]["bias"].copy()}
  return mirrored


def mirror_batches(batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
  """Each batch's indices reversed: the same examples, summed in another order."""
  return [[indices[::-1].copy() for indices in epoch] for epoch in batches]
