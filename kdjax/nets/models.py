"""TeacherNet and StudentNet, the original's activation-free conv nets, in Flax (NHWC, HWIO kernels).

TeacherNet: conv1 (3->12), conv2..conv12 (12->12), 3x3 SAME stride 1 with bias; 2x2 max-pool after
conv3, conv6, conv9, conv12; flatten (H*W*C order in Flax); Dense `fc` -> num_classes.
StudentNet: conv1..conv4, each 3x3 SAME with bias and each followed by a 2x2 max-pool; flatten; `fc`.
For 64x64 inputs both flatten 12*4*4 = 192 features.

`pool="fast"` (the default) is kdjax.nets.pooling.max_pool_2x2, whose values and gradients equal
`pool="reduce_window"` (`nn.max_pool`) bit for bit and whose backward is ~10x cheaper on XLA:CPU; the
choice is kept so that a user can compare (config speed.pool).

`init="pytorch"` reproduces PyTorch's default Conv2d/Linear initialisation (weights and biases from
U(-1/sqrt(fan_in), +1/sqrt(fan_in)), fan_in = in_channels*kh*kw or in_features), the original's;
`init="lecun_normal"` is Flax's default (LeCun-normal kernels, zero biases); `init="he_normal"` draws kernels from
N(0, 2/fan_in) (zero biases), which keeps a ReLU net's second moment E[x^2] constant through its convs:
E[relu(z)^2] = Var(z)/2 and Var(z) = fan_in * Var(w) * E[x^2].
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.nets import block_conv
from kdjax.nets import onednn_conv
from kdjax.nets import onednn_pool
from kdjax.nets import pooling

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "none": lambda x: x,
    "relu": nn.relu,
}
INITS = ("pytorch", "lecun_normal", "he_normal")
POOLS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "fast": pooling.max_pool_2x2,
    "reduce_window": lambda x: nn.max_pool(x, window_shape=(2, 2), strides=(2, 2)),
}
CONVS = ("xla", "blocks")
ENGINES = ("xla", "auto", "onednn")  # who computes the convs: kdjax.config.nets.conv_engine
KERNEL_SIZE = (3, 3)


def _pytorch_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for both weights and biases."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _layer_inits(init: str, fan_in: int) -> dict:
  if init == "pytorch":
    return dict(kernel_init=_pytorch_uniform(fan_in), bias_init=_pytorch_uniform(fan_in))
  if init == "lecun_normal":
    return dict(kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros)
  if init == "he_normal":
    return dict(kernel_init=nn.initializers.he_normal(), bias_init=nn.initializers.zeros)
  raise ValueError(f"model.init must be one of {INITS}, got {init!r}")


class ConvParams(nn.Module):
  """A 3x3 conv's parameters alone, as nn.Conv declares them (kernel [3, 3, in, out], then bias [out], same
  initialisers, so the same values from the same key), for convs computed elsewhere (kdjax.nets.block_conv)."""

  features: int
  in_features: int
  inits: dict

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", self.inits["kernel_init"], (*KERNEL_SIZE, self.in_features, self.features))
    return kernel, self.param("bias", self.inits["bias_init"], (self.features,))


class ConvNet(nn.Module):
  """A stack of 3x3 SAME convs (optional activation), 2x2 max-pools after the listed convs, and a head.

  Attributes:
    conv_features: output channels of conv1, conv2, ... in order.
    pool_after: 1-based indices of the convs followed by a max-pool.
    num_classes: width of the `fc` head.
    activation: "none" (the seed) or "relu", applied after every conv.
    init_scheme: config model.init, "pytorch" (the seed), "lecun_normal" or "he_normal".
    pool: how the 2x2 max-pool is computed, a key of POOLS; "fast" and "reduce_window" give the same
      values and gradients bit for bit, at different speeds. After a conv in oneDNN, "fast" is oneDNN's pool
      (kdjax.nets.onednn_pool: the same bits again).
    conv: how the convs are computed: "xla" (nn.Conv) or "blocks" (kdjax.nets.block_conv: each run of convs up to a
      pool on 2x2 pixel blocks; the same function, float32 sums in another order). Same parameters either way.
      A blocked run's pool is kdjax.nets.block_conv.max_pool whatever `pool` says (the same bits as both).
    engine: "xla" (the convs as `conv` says), "onednn" (every conv in oneDNN, kdjax.nets.onednn_conv: float32 on CPU
      only) or "auto" (oneDNN when the traced convolution is float32 on a CPU with the extension loaded, else
      "xla"; float64, the parity suite's, stays in XLA). Same parameters whichever computes them.
  """

  conv_features: Sequence[int]
  pool_after: Sequence[int]
  num_classes: int
  activation: str = "none"
  init_scheme: str = "pytorch"  # `init` would shadow Module.init
  pool: str = "fast"
  conv: str = "xla"
  engine: str = "xla"

  @property
  def layer_names(self) -> tuple[str, ...]:
    """Layers in definition order: the order PyTorch registers the original's parameters."""
    return tuple(f"conv{i + 1}" for i in range(len(self.conv_features))) + ("fc",)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images: float32 [N, H, W, C] (normalised); returns logits float32 [N, num_classes]."""
    act = ACTIVATIONS[self.activation]
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {tuple(POOLS)}, got {self.pool!r}")
    if self.conv not in CONVS:
      raise ValueError(f"conv must be one of {CONVS}, got {self.conv!r}")
    if self.engine not in ENGINES:
      raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
    max_pool = POOLS[self.pool]
    x, layout = images, "pixels"
    kh, kw = KERNEL_SIZE
    for index, features in enumerate(self.conv_features, start=1):
      in_features = x.shape[-1] // (1 if layout == "pixels" else 4)
      inits = _layer_inits(self.init_scheme, in_features * kh * kw)
      on_onednn = self.engine != "xla" and self._on_onednn(x, f"conv{index}")
      if on_onednn:
        kernel, bias = ConvParams(features, in_features, inits, name=f"conv{index}")()
        x = act(onednn_conv.conv(x, kernel, bias))
      elif self.conv == "blocks" and (layout != "pixels" or block_conv.supported(*x.shape[1:3])):
        if layout == "pixels":
          x, layout = block_conv.to_aligned(x), "aligned"
        kernel, bias = ConvParams(features, in_features, inits, name=f"conv{index}")()
        x, layout = block_conv.conv(x, kernel, bias, layout)
        x = act(x)  # elementwise, and act(0) = 0 keeps an offset layout's border zeros
      else:
        x = act(nn.Conv(features, KERNEL_SIZE, padding="SAME", name=f"conv{index}", **inits)(x))
      if index in self.pool_after:
        if layout != "pixels":
          x = block_conv.max_pool(x, layout)
        else:   # after a oneDNN conv, the "fast" pool is oneDNN's too: the same bits (kdjax.nets.onednn_pool)
          x = onednn_pool.max_pool_2x2(x) if on_onednn and self.pool == "fast" else max_pool(x)
        layout = "pixels"
    if layout != "pixels":
      x = block_conv.to_pixels(x, layout)
    x = x.reshape((x.shape[0], -1))  # H*W*C order; PyTorch's is C*H*W (see parity/convert.py).
    return nn.Dense(self.num_classes, name="fc", **_layer_inits(self.init_scheme, x.shape[-1]))(x)

  def _on_onednn(self, x: jax.Array, name: str) -> bool:
    """Does oneDNN compute the conv `name` of `x`? It computes in the dtype nn.Conv would: x's and its parameters'
    promoted (float64 parameters, the parity suite's, make a float64 conv: XLA's). "onednn" where it cannot run is
    an error naming why."""
    if self.engine == "xla":
      return False
    params = self.variables.get("params", {}).get(name, {})   # empty while init creates them (float32)
    dtype = jnp.result_type(x.dtype, *(leaf.dtype for leaf in jax.tree_util.tree_leaves(params)))
    reason = onednn_conv.runs_here(dtype)
    if reason and self.engine == "onednn":
      raise ValueError(f"engine 'onednn' (config speed.conv) cannot run this conv: {reason}")
    return not reason


def teacher_net(num_classes: int, activation: str = "none", init: str = "pytorch",
                pool: str = "fast", conv: str = "xla", engine: str = "xla") -> ConvNet:
  """The original's TeacherNet: 12 convs of 12 channels, pools after conv3, conv6, conv9, conv12."""
  return ConvNet(conv_features=(12,) * 12, pool_after=(3, 6, 9, 12), num_classes=num_classes,
                 activation=activation, init_scheme=init, pool=pool, conv=conv, engine=engine)


def student_net(num_classes: int, activation: str = "none", init: str = "pytorch",
                pool: str = "fast", conv: str = "xla", engine: str = "xla") -> ConvNet:
  """Our StudentNet: 4 convs of 12 channels, each followed by a 2x2 max-pool."""
  return ConvNet(conv_features=(12,) * 4, pool_after=(1, 2, 3, 4), num_classes=num_classes,
                 activation=activation, init_scheme=init, pool=pool, conv=conv, engine=engine)


# Called as factory(num_classes, activation, init) or with pool=..., conv=... as well.
MODEL_FACTORIES = {"teacher": teacher_net, "student": student_net}


def param_count(params) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def flops_per_image(model: ConvNet, image_shape: Sequence[int]) -> int:
  """Forward-pass FLOPs for one image (2 per multiply-add; bias adds and pools not counted).

  conv: 2*H*W*Cin*Cout*kh*kw at the conv's (SAME, stride 1) resolution; fc: 2*in*out.
  """
  height, width, channels = image_shape
  kh, kw = KERNEL_SIZE
  flops = 0
  for index, features in enumerate(model.conv_features, start=1):
    flops += 2 * height * width * channels * features * kh * kw
    channels = features
    if index in model.pool_after:
      height, width = height // 2, width // 2
  return int(flops + 2 * height * width * channels * model.num_classes)


def init_params(model: ConvNet, key: jax.Array, image_shape: Sequence[int]):
  """Parameters for `model` on float32 inputs of shape [1, *image_shape]."""
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
