"""Flax params <-> PyTorch state_dict, and NHWC <-> NCHW: every layout conversion of kdjax lives here.

  conv kernel   Flax HWIO [kh, kw, in, out]     <->  PyTorch OIHW [out, in, kh, kw]
  fc kernel     Flax Dense [in, out]            <->  PyTorch Linear [out, in]
  fc input      Flax flattens NHWC as H*W*C     <->  PyTorch flattens NCHW as C*H*W
  images        Flax NHWC                       <->  PyTorch NCHW

so the fc rows are permuted as well as transposed: Flax row h*W*C + w*C + c is PyTorch column c*H*W + h*W + w.
State-dict keys are the original's: conv1.weight, conv1.bias, ..., fc.weight, fc.bias, in registration order.
The conversions are pure re-indexings (no arithmetic), so round trips are exact.
"""

import collections
import math
import re
from typing import Mapping, Sequence

import numpy as np
import torch

FC = "fc"


def layer_names(params: Mapping) -> tuple[str, ...]:
  """conv1, conv2, ..., convN, fc: the definition (= PyTorch registration) order, not sorted key order."""
  convs = sorted((name for name in params if re.fullmatch(r"conv\d+", name)), key=lambda n: int(n[4:]))
  unknown = set(params) - set(convs) - {FC}
  if unknown or FC not in params:
    raise ValueError(f"expected layers conv1..convN and fc, got {sorted(params)}")
  return (*convs, FC)


def fc_feature_shape(params: Mapping) -> tuple[int, int, int]:
  """(H, W, C) of the feature map that `fc` flattens: C from the last conv, H = W (square inputs)."""
  channels = np.shape(params[layer_names(params)[-2]]["kernel"])[-1]
  in_features = np.shape(params[FC]["kernel"])[0]
  side = math.isqrt(in_features // channels)
  if side * side * channels != in_features:
    raise ValueError(f"fc has {in_features} inputs: not a square map of {channels} channels")
  return side, side, channels


def conv_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """HWIO -> OIHW."""
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def conv_kernel_from_torch(weight: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def fc_kernel_to_torch(kernel: np.ndarray, feature_shape: Sequence[int]) -> np.ndarray:
  """Dense [H*W*C, out] (rows in H, W, C order) -> Linear [out, C*H*W] (columns in C, H, W order)."""
  height, width, channels = feature_shape
  out = kernel.shape[1]
  return np.ascontiguousarray(
      kernel.reshape(height, width, channels, out).transpose(3, 2, 0, 1).reshape(out, -1))


def fc_kernel_from_torch(weight: np.ndarray, feature_shape: Sequence[int]) -> np.ndarray:
  """Linear [out, C*H*W] -> Dense [H*W*C, out]."""
  height, width, channels = feature_shape
  out = weight.shape[0]
  return np.ascontiguousarray(
      weight.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, out))


def images_to_torch(images: np.ndarray) -> torch.Tensor:
  """float32 NHWC -> float32 NCHW tensor."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(images, np.float32), (0, 3, 1, 2))))


def to_numpy_tree(tree):
  return {layer: {name: np.asarray(value) for name, value in tensors.items()} for layer, tensors in tree.items()}


def to_state_dict(params: Mapping, feature_shape: Sequence[int] | None = None) -> "collections.OrderedDict":
  """Flax params {layer: {kernel, bias}} -> PyTorch state_dict {layer.weight, layer.bias} (float32 tensors)."""
  params = to_numpy_tree(params)
  feature_shape = feature_shape or fc_feature_shape(params)
  state = collections.OrderedDict()
  for layer in layer_names(params):
    kernel = params[layer]["kernel"]
    weight = fc_kernel_to_torch(kernel, feature_shape) if layer == FC else conv_kernel_to_torch(kernel)
    state[f"{layer}.weight"] = torch.from_numpy(weight)
    state[f"{layer}.bias"] = torch.from_numpy(np.array(params[layer]["bias"]))
  return state


def from_state_dict(state_dict: Mapping, feature_shape: Sequence[int] | None = None) -> dict:
  """PyTorch state_dict -> Flax params {layer: {"kernel", "bias"}} (numpy float32)."""
  params: dict = {}
  for key, value in state_dict.items():
    layer, _, name = key.rpartition(".")
    if name not in ("weight", "bias"):
      raise ValueError(f"unexpected state_dict key {key!r}")
    params.setdefault(layer, {})[name] = value.detach().cpu().numpy()
  layers = layer_names(params)
  if feature_shape is None:
    # The same (H, W, C) as fc_feature_shape, read from the PyTorch shapes.
    channels = params[layers[-2]]["weight"].shape[0]
    side = math.isqrt(params[FC]["weight"].shape[1] // channels)
    feature_shape = (side, side, channels)
  converted = {}
  for layer in layers:
    weight = params[layer]["weight"]
    kernel = (fc_kernel_from_torch(weight, feature_shape) if layer == FC
              else conv_kernel_from_torch(weight))
    converted[layer] = {"kernel": kernel, "bias": np.array(params[layer]["bias"])}
  return converted


def load_into(model: torch.nn.Module, params: Mapping) -> torch.nn.Module:
  """Copies Flax params into a PyTorch net (strict: every key must match)."""
  model.load_state_dict(to_state_dict(params), strict=True)
  return model


def params_of(model: torch.nn.Module) -> dict:
  """A PyTorch net's parameters as Flax params (numpy), for comparison with kdjax's."""
  return from_state_dict(model.state_dict())
