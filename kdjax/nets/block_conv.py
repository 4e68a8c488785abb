"""3x3 SAME convolutions and 2x2 max-pools computed on 2x2 pixel blocks (space-to-depth), for XLA:CPU speed.

XLA:CPU runs a 12-channel convolution at a fraction of the speed it runs a 48-channel one (forward, 32x32,
batch 128, 2-core AMD EPYC: 50 against 184 GFLOP/s). Regrouping every 2x2 pixel block into one 4C-channel
pixel turns each 3x3 conv into a 2x2 conv on a grid half the size, with 16/9 of the multiply-adds but 4x the
channels: the same convolution, with sums taken in another order (float32 results move at the rounding level;
float64 agrees to ~1e-15, tests/nets/test_block_conv.py).

Layouts of an activation x [N, H, W, C] (H, W even); a, b in {0, 1} are the row and column inside a block:
  pixels:   x itself
  aligned:  A[n, i, j, (a, b, c)] = x[n, 2i+a,   2j+b,   c]                     [N, H/2,   W/2,   4C]
  offset:   B[n, i, j, (a, b, c)] = x[n, 2i-1+a, 2j-1+b, c], 0 outside the image [N, H/2+1, W/2+1, 4C]

A 3x3 SAME conv (kernel k [3, 3, C, D], output pixel p reads input pixels p-1..p+1) maps aligned -> offset and
offset -> aligned. Either way output block i reads input blocks i-1+u (aligned input, padded by one zero block)
or i+u (offset input), u in {0, 1}, and input row 2(block)+a' meets output row 2i+a at kernel row dy = 2u+a'-a:

  Y = conv_VALID(X, K) + tile(bias, 4),   K[u, v, (a', b', c), (a, b, d)] = k[2u+a'-a, 2v+b'-b, c, d]

(0 where an index falls outside 0..2); an offset output is multiplied by its border mask, so that the pixels
outside the image are the zeros the next conv's SAME padding expects. A run of convs alternates
aligned -> offset -> aligned ...; a 2x2 max-pool reads its window's four corners straight from either layout
(window (p, q) is aligned block (p, q), or offset blocks p..p+1, q..q+1) and takes kdjax.nets.pooling.max_of_corners,
whose gradient goes to the first maximum, as nn.max_pool's does: pooling here equals nn.max_pool's bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kdjax.nets import pooling

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def supported(height: int, width: int) -> bool:
  """Can a run of convs at this resolution go through blocks? (even sides, at least 2 blocks each way)"""
  return height % 2 == 0 and width % 2 == 0 and height >= 4 and width >= 4


def to_aligned(x: jax.Array) -> jax.Array:
  """pixels [N, H, W, C] -> aligned [N, H/2, W/2, 4C]."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def from_aligned(blocks: jax.Array) -> jax.Array:
  """aligned [N, H/2, W/2, 4C] -> pixels [N, H, W, C]."""
  n, h2, w2, c4 = blocks.shape
  c = c4 // 4
  return blocks.reshape(n, h2, w2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h2, 2 * w2, c)


def from_offset(blocks: jax.Array) -> jax.Array:
  """offset [N, H/2+1, W/2+1, 4C] -> pixels [N, H, W, C] (the border half-blocks dropped)."""
  return from_aligned(blocks)[:, 1:-1, 1:-1]


def block_kernel(kernel: jax.Array) -> jax.Array:
  """k [3, 3, C, D] -> K [2, 2, 4C, 4D], K[u, v, (a', b', c), (a, b, d)] = k[2u+a'-a, 2v+b'-b, c, d] or 0."""
  padded = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0)))  # padded[dy+1]; rows 0 and 4 are the zeros
  index = np.arange(2)[:, None, None] * 2 + np.arange(2)[None, :, None] - np.arange(2)[None, None, :]  # [u, a', a]
  index = np.where((index >= 0) & (index <= 2), index + 1, 0)
  # [u, a', a] x [v, b', b] -> gathered [u, a', a, v, b', b, C, D]
  gathered = padded[index[:, :, :, None, None, None], index[None, None, None, :, :, :]]
  c, d = kernel.shape[2:]
  return gathered.transpose(0, 3, 1, 4, 6, 2, 5, 7).reshape(2, 2, 4 * c, 4 * d)


def _border_mask(h2: int, w2: int, channels: int, dtype) -> np.ndarray:
  """1 on the offset grid's pixels inside the image, 0 on the half-blocks outside: [H/2+1, W/2+1, 4C]."""
  mask = np.ones((h2 + 1, w2 + 1, 2, 2, channels), dtype)
  mask[0, :, 0] = mask[-1, :, 1] = 0
  mask[:, 0, :, 0] = mask[:, -1, :, 1] = 0
  return mask.reshape(h2 + 1, w2 + 1, 4 * channels)


def conv(blocks: jax.Array, kernel: jax.Array, bias: jax.Array, layout: str) -> tuple[jax.Array, str]:
  """The 3x3 SAME conv of the image `blocks` holds in `layout` ("aligned" or "offset"); returns the result in
  the other layout and that layout's name."""
  dtype = jnp.result_type(blocks, kernel, bias)  # promoted as nn.Conv promotes (float64 weights: float64 conv)
  blocks, weights, bias = blocks.astype(dtype), block_kernel(kernel.astype(dtype)), bias.astype(dtype)
  if layout == "aligned":
    # Padded here, not by the conv: with conv padding XLA:CPU lowers the weight gradient to a slow generic loop
    # (805 against 47 ms at batch 128, 32x32x48).
    blocks = jnp.pad(blocks, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = lax.conv_general_dilated(blocks, weights, (1, 1), "VALID", dimension_numbers=_DIMENSIONS)
  y = y + jnp.tile(bias, 4)
  if layout == "aligned":
    h2, w2 = y.shape[1] - 1, y.shape[2] - 1
    return y * _border_mask(h2, w2, kernel.shape[-1], np.dtype(y.dtype)), "offset"
  return y, "aligned"


def max_pool(blocks: jax.Array, layout: str) -> jax.Array:
  """2x2 stride-2 max-pool of the image `blocks` holds in `layout`, in pixels [N, H/2, W/2, C]; values and
  gradients equal kdjax.nets.pooling.max_pool_2x2 of the pixels (and so nn.max_pool's) bit for bit."""
  c = blocks.shape[-1] // 4
  group = lambda a, b: slice((2 * a + b) * c, (2 * a + b + 1) * c)
  if layout == "aligned":
    return pooling.max_of_corners(*(blocks[..., group(a, b)] for a in (0, 1) for b in (0, 1)))
  h, w = blocks.shape[1] - 1, blocks.shape[2] - 1
  # Window (p, q): corner (a, b) is pixel (2p+a, 2q+b) = offset block (p+a, q+b), position (1-a, 1-b).
  return pooling.max_of_corners(*(blocks[:, a:a + h, b:b + w, group(1 - a, 1 - b)] for a in (0, 1) for b in (0, 1)))


def to_pixels(blocks: jax.Array, layout: str) -> jax.Array:
  return from_aligned(blocks) if layout == "aligned" else from_offset(blocks)
