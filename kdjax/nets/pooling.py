"""2x2, stride-2 max-pooling with a cheap, exact gradient (NHWC).

For x of shape [N, H, W, C], window (i, j) holds the four corners, in row-major window order,

  a = x[:, 2i, 2j],  b = x[:, 2i, 2j+1],  c = x[:, 2i+1, 2j],  d = x[:, 2i+1, 2j+1]

  forward:   y = max(max(a, b), max(c, d))                                   [N, H/2, W/2, C]
  backward:  dx at the FIRST corner of (a, b, c, d) equal to y gets dy, the other three get 0:
               da = dy * [a == y]
               db = dy * [b == y and a != y]
               dc = dy * [c == y and a != y and b != y]
               dd = dy * [d == y and a != y and b != y and c != y]

An odd last row or column belongs to no window and is dropped (VALID padding, PyTorch's floor), with gradient
0, as in `nn.max_pool`.

The first-maximum rule is the tie rule of XLA's reduce_window gradient (select_and_scatter with `>=`, the
gradient of `flax.linen.max_pool`) and of PyTorch's MaxPool2d, so both the values and the gradients equal
`nn.max_pool(x, (2, 2), strides=(2, 2))`'s bit for bit (tests/nets/test_pooling.py), ties included. Max is exact
in floating point, and each input belongs to exactly one window, so the gradient is a selection, never a sum.

Why: XLA:CPU lowers `nn.max_pool`'s gradient to a slow variadic reduce_window and scatter; these reshapes and
selects fuse into elementwise loops (docs/speed.md#the-switches).

NaN, infinities and signed zeros follow XLA's max: a window with a NaN pools to NaN and its dy goes to d (no corner
equals NaN), an all -inf window to -inf, a -0.0 / +0.0 tie to +0.0 (dy at the first of the two). The oneDNN path's
pool (kdjax.nets.onednn_pool) computes these same bits (tests/nets/test_onednn_pool.py).
"""

import jax
import jax.numpy as jnp


def _corners(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The windows' four corners (a, b, c, d), each [N, H/2, W/2, C], in row-major window order (H, W even)."""
  n, h, w, c = x.shape
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
  return (windows[:, :, 0, :, 0], windows[:, :, 0, :, 1], windows[:, :, 1, :, 0], windows[:, :, 1, :, 1])


def _max(a, b, c, d):
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _to_first_maximum(a, b, c, d, pooled, cotangent) -> list[jax.Array]:
  """[da, db, dc, dd]: the cotangent at the first of the corners (a, b, c, d) equal to `pooled`, 0 elsewhere."""
  zero = jnp.zeros_like(cotangent)
  at_a = a == pooled
  at_b = (b == pooled) & ~at_a
  at_c = (c == pooled) & ~(at_a | at_b)
  at_d = ~(at_a | at_b | at_c)  # the maximum is one of the four: d is the last place it can be
  return [jnp.where(mask, cotangent, zero) for mask in (at_a, at_b, at_c, at_d)]


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """Max over non-overlapping 2x2 windows: float [N, H, W, C] -> [N, H//2, W//2, C]. See the module docstring."""
  if x.ndim != 4:
    raise ValueError(f"max_pool_2x2 takes NHWC input, got shape {x.shape}")
  height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  if (height, width) != x.shape[1:3]:
    x = x[:, :height, :width]  # the slice's own gradient puts the dropped row/column's zeros back
  return _max_pool_even(x)


@jax.custom_vjp
def _max_pool_even(x: jax.Array) -> jax.Array:
  return _max(*_corners(x))


def _forward(x):
  a, b, c, d = _corners(x)
  pooled = _max(a, b, c, d)
  return pooled, (x, pooled)


def _backward(residuals, cotangent):
  x, pooled = residuals
  grads = _to_first_maximum(*_corners(x), pooled, cotangent)
  n, h2, w2, ch = cotangent.shape
  # [N, H/2, W/2, C] x (row, column) -> [N, H/2, 2, W/2, 2, C] -> [N, H, W, C], the inverse of _corners.
  top = jnp.stack(grads[:2], axis=3)      # [N, H/2, W/2, 2 (column), C]
  bottom = jnp.stack(grads[2:], axis=3)
  window_grads = jnp.stack([top, bottom], axis=2)  # [N, H/2, 2 (row), W/2, 2 (column), C]
  return (jax.lax.optimization_barrier(window_grads.reshape(n, 2 * h2, 2 * w2, ch)),)


_max_pool_even.defvjp(_forward, _backward)


@jax.custom_vjp
def max_of_corners(a: jax.Array, b: jax.Array, c: jax.Array, d: jax.Array) -> jax.Array:
  """max(max(a, b), max(c, d)) of a window's four corners given apart (same shapes; kdjax.nets.block_conv's
  pools), with the gradient to the first corner equal to the maximum: the rule above, so that a pool built
  from it equals max_pool_2x2 (and nn.max_pool) bit for bit."""
  return _max(a, b, c, d)


def _corners_forward(a, b, c, d):
  pooled = _max(a, b, c, d)
  return pooled, (a, b, c, d, pooled)


def _corners_backward(residuals, cotangent):
  return tuple(_to_first_maximum(*residuals, cotangent))


max_of_corners.defvjp(_corners_forward, _corners_backward)
