"""The 2x2 stride-2 max-pool after a oneDNN convolution, in the oneDNN extension too (NHWC float32, CPU).

    y[n, i, j, c] = max(max(a, b), max(c, d)),  (a, b, c, d) = x[n, 2i, 2j, c], x[n, 2i, 2j+1, c], x[n, 2i+1, 2j, c],
                                                               x[n, 2i+1, 2j+1, c]
    max(p, q) = NaN if p or q is NaN; +0.0 for a -0.0 / +0.0 tie; else the larger       (XLA's max)
    dx = dy at the first of (a, b, c, d) equal to y (at d where none is: y is NaN), 0 at the other three

The forward writes each window's argmax to a workspace (one byte a pooled value) and the backward scatters dy
through it; the extension (kdjax/nets/_onednn.cc, loaded by kdjax.nets.onednn_conv) runs both through the typed
XLA FFI, on the executor thread and OpenMP team of oneDNN's convs. These are the rules of
kdjax.nets.pooling.max_pool_2x2 and nn.max_pool: values and gradients equal max_pool_2x2's bit for bit, ties,
NaN, infinities and signed zeros included (tests/nets/test_onednn_pool.py; a NaN's payload aside). So this is a speed
change only: the gradient is read back from the workspace instead of recomputed from (x, y).

The loops are the extension's own, not oneDNN's pooling primitive, which drops NaNs (docs/speed.md#the-onednn-extension).

An odd last row or column belongs to no window and is dropped, with gradient 0 (PyTorch's floor), as in
max_pool_2x2.
"""

import jax
import jax.numpy as jnp

from kdjax.nets import onednn_conv


def workspace_bytes(batch: int, height: int, width: int, channels: int) -> int:
  """Bytes of the argmax workspace for an even [batch, height, width, channels] input: one a pooled value."""
  return batch * (height // 2) * (width // 2) * channels


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max over non-overlapping 2x2 windows of float32 [N, H, W, C] -> [N, H//2, W//2, C], in oneDNN."""
  if x.ndim != 4 or x.dtype != jnp.float32:
    raise ValueError(f"the oneDNN pool takes float32 NHWC input, got {x.dtype} {x.shape}")
  height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  if (height, width) != x.shape[1:3]:
    x = x[:, :height, :width]  # the slice's own gradient puts the dropped row/column's zeros back
  return _pool(x)


def forward_with_workspace(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(pooled, workspace) of an even float32 NHWC x: the forward and the backward's residual."""
  onednn_conv.library()   # loads the extension and registers its FFI targets (raises saying why where it cannot)
  n, h, w, c = x.shape
  out = (jax.ShapeDtypeStruct((n, h // 2, w // 2, c), jnp.float32),
         jax.ShapeDtypeStruct((workspace_bytes(n, h, w, c),), jnp.uint8))
  return jax.ffi.ffi_call(onednn_conv.POOL_TARGETS["forward"], out, vmap_method="sequential")(x)


@jax.custom_vjp
def _pool(x):
  return forward_with_workspace(x)[0]


def backward_from_workspace(workspace: jax.Array, dy: jax.Array) -> jax.Array:
  """dx of the pool whose forward wrote `workspace`: dy at each window's first maximum (its last corner where the
  maximum is NaN), 0 elsewhere."""
  onednn_conv.library()
  n, h, w, c = dy.shape   # x's height and width are even here: twice dy's
  dx = jax.ShapeDtypeStruct((n, 2 * h, 2 * w, c), jnp.float32)
  return jax.ffi.ffi_call(onednn_conv.POOL_TARGETS["backward"], dx, vmap_method="sequential")(dy, workspace)


_pool.defvjp(forward_with_workspace, lambda workspace, dy: (backward_from_workspace(workspace, dy),))
