"""The data layer: every data set loads into memory as uint8 NHWC images plus int32 labels.

A data set is a module in this package with `load(data_config) -> Dataset`, registered by name in SOURCES;
a new set is a new file plus one line here. The sets (docs/data.md):

  digits         scikit-learn's 1,797 8x8 digits, resized to data.image_size (embedded: no download)
  tiny_imagenet  200 classes, 64x64; kdjax's own TFDS builder (tiny_imagenet/), from data.manual_dir or downloaded
  cifar10/100    32x32; TFDS's builders, generated without TensorFlow (cifar.py)
  image_folder   data.manual_dir/<train|val>/<class>/*.jpg|png, resized to data.image_size

TFDS sets are prepared once into data.data_dir (TFDS's default when empty) as ArrayRecord and read back without
TensorFlow (tfds_common.py). The model input is made explicit by `normalize`:

  x = (image / 255 - mean) / std       (per channel; mean, std from the training split, "standardize")
  x = image / 255                      ("unit")

computed once on the host for all 256 pixel values in float64, rounded once to float32 (`normalization_table`)
and looked up inside the jitted step, so every program sees the same inputs (docs/parity.md#inputs-the-same-bits-on-both-sides).

and the training order by `epoch_order`: a permutation drawn from (seed, epoch) alone, so every phase and
every framework (see parity/) sees the same batches in the same order.
"""

import dataclasses
import fractions
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import DataError  # noqa: F401  (data.DataError)

# name -> module (imported lazily, so the embedded set never pays for TFDS).
SOURCES = {
    "digits": "kdjax.data.digits",
    "tiny_imagenet": "kdjax.data.tiny_imagenet",
    "cifar10": "kdjax.data.cifar",
    "cifar100": "kdjax.data.cifar",
    "image_folder": "kdjax.data.image_folder",
}
NORMALIZATIONS = ("standardize", "unit")
# XLA:CPU adopts a host array in place (jax.device_put copies nothing) when its data starts on a 64-byte boundary;
# numpy's large arrays start 16 bytes past a page, so the study's device copy of the images would be a second one.
HOST_ALIGNMENT = 64


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A data set held in memory. Images uint8 [N, H, W, C]; labels int32 [N]."""

  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(d) for d in self.train_images.shape[1:])

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "train":
      return self.train_images, self.train_labels
    if name == "validation":
      return self.val_images, self.val_labels
    raise DataError(f"unknown split {name!r}: expected 'train' or 'validation'")


def subset_indices(count: int, limit: int) -> np.ndarray | None:
  """The examples data.max_*_examples keeps of `count`: the first `limit` of a fixed (seed 0) permutation, sorted;
  None (all of them) when limit <= 0 or limit >= count. A source that can read single examples (tfds_common) reads
  only these."""
  if limit <= 0 or limit >= count:
    return None
  return np.sort(np.random.default_rng(0).permutation(count)[:limit])


def host_images(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
  """An uninitialised array whose data starts on a HOST_ALIGNMENT boundary: a CPU device array made of it
  shares its memory, so a split is held once (not once on the host and once on the device)."""
  size = int(np.prod(shape)) * np.dtype(dtype).itemsize
  raw = np.empty(size + HOST_ALIGNMENT, np.uint8)
  offset = -raw.ctypes.data % HOST_ALIGNMENT
  return raw[offset:offset + size].view(dtype).reshape(shape)


def held_once(images: np.ndarray) -> np.ndarray:
  """`images`, read-only, in host_images' alignment (copied only when not aligned already). Read-only because a
  device array may share the memory: writing into a split would change the study's data under it."""
  if images.ctypes.data % HOST_ALIGNMENT or not images.flags.c_contiguous:
    aligned = host_images(images.shape, images.dtype)
    aligned[...] = images
    images = aligned
  images.flags.writeable = False
  return images


def _subset(images: np.ndarray, labels: np.ndarray, limit: int):
  """subset_indices of the examples (a source that read only those already has `limit` or fewer: unchanged)."""
  keep = subset_indices(len(labels), limit)
  return (images, labels) if keep is None else (images[keep], labels[keep])


def load(data_config) -> Dataset:
  """Loads `data_config.name`, limited to data.max_train_examples / data.max_val_examples (0 = all); the TFDS
  sets decode only the examples kept (tfds_common.read_split)."""
  if data_config.name not in SOURCES:
    raise DataError(f"data.name: unknown data set {data_config.name!r}; known: {sorted(SOURCES)}")
  dataset = importlib.import_module(SOURCES[data_config.name]).load(data_config)
  train = _subset(dataset.train_images, dataset.train_labels, data_config.max_train_examples)
  val = _subset(dataset.val_images, dataset.val_labels, data_config.max_val_examples)
  return dataclasses.replace(dataset, train_images=held_once(train[0]), train_labels=train[1],
                             val_images=held_once(val[0]), val_labels=val[1])


def channel_stats(images: np.ndarray, pixels_per_pass: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of x = images/255, as float32 [C], from exact integer sums: with S1 = Σ v and
  S2 = Σ v² over a channel's N uint8 values v (a count of each of the 256 values),

      mean = S1 / (255 N)        std = sqrt(max((N S2 − S1²) / (255 N)², 1e-12))

  each rounded once to float64, then to float32; the values counted `pixels_per_pass` pixels of a channel at a
  time (np.bincount's int64 copy of them: 16 MB), never a float copy of the images."""
  channels = images.shape[-1]
  counts = np.zeros((channels, 256), np.int64)
  chunk = max(1, pixels_per_pass // max(1, images.shape[1] * images.shape[2]))   # images per pass
  for start in range(0, len(images), chunk):
    block = images[start:start + chunk]
    for channel in range(channels):
      counts[channel] += np.bincount(block[..., channel].ravel(), minlength=256)
  values = np.arange(256, dtype=np.int64)
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean, std = [], []
  for channel in range(channels):
    s1, s2 = int(counts[channel] @ values), int(counts[channel] @ (values * values))   # exact: < 2**63
    mean.append(float(fractions.Fraction(s1, 255 * count)))
    std.append(math.sqrt(max(float(fractions.Fraction(count * s2 - s1 * s1, (255 * count) ** 2)), 1e-12)))
  return np.array(mean).astype(np.float32), np.array(std).astype(np.float32)


def normalization_constants(dataset: Dataset, normalization: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), float32 [C], such that the model sees (image/255 - mean)/std."""
  channels = dataset.image_shape[-1]
  if normalization == "unit":
    return np.zeros(channels, np.float32), np.ones(channels, np.float32)
  if normalization == "standardize":
    return channel_stats(dataset.train_images)
  raise DataError(f"data.normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def normalization_table(mean, std) -> np.ndarray:
  """The model input of every pixel value, per channel: float32 [256, C] with

    table[v, c] = float32((v / 255 - mean[c]) / std[c])     (computed in float64, rounded once)

  mean, std: [C], concrete (numpy, or jax arrays known at trace time), not values traced by jit.
  """
  for name, value in (("mean", mean), ("std", std)):
    if isinstance(value, jax.core.Tracer):
      raise TypeError(f"normalize: {name} is a traced value; the normalisation table is built on the host, so "
                      f"pass mean and std as concrete arrays (close over them), not as jit arguments")
  mean = np.asarray(mean, np.float64).reshape(-1)
  std = np.asarray(std, np.float64).reshape(-1)
  if mean.shape != std.shape:
    raise ValueError(f"normalize: mean {mean.shape} and std {std.shape} differ in shape")
  values = np.arange(256, dtype=np.float64)[:, None] / 255.0
  return ((values - mean) / std).astype(np.float32)


def normalize(images, mean, std):
  """uint8 [N, H, W, C] -> float32 model input (image/255 - mean)/std, as table[image, channel].

  The table (normalization_table) is built from the concrete mean and std when this is traced; inside a jit it
  is a constant and the lookup a gather, which XLA cannot round differently from one program to the next (the
  formula itself it would: a division by a constant becomes a multiply by its reciprocal, a fusion keeps
  float64 intermediates before a float64 conv, ...). Equal to the float64 formula rounded once to float32.
  """
  table = jnp.asarray(normalization_table(mean, std))
  images = jnp.asarray(images)
  if images.dtype != jnp.uint8:
    raise TypeError(f"normalize: images must be uint8 pixel values, got {images.dtype}")
  channels = jnp.arange(table.shape[1])
  return table[images.astype(jnp.int32), channels]


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of epoch `epoch` (1-based): a permutation drawn from (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(order: np.ndarray, batch_size: int, drop_remainder: bool = False) -> list[np.ndarray]:
  """Consecutive batches of `order`; the last one is shorter unless drop_remainder (PyTorch's drop_last)."""
  stop = len(order) - len(order) % batch_size if drop_remainder else len(order)
  return [order[start:start + batch_size] for start in range(0, stop, batch_size)]
