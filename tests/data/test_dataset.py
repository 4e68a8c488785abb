"""kdjax/data/__init__.py: a loaded data set's splits are held once (the device array shares their memory)."""

import tracemalloc

import jax
import numpy as np
import pytest

from kdjax import data as data_lib
from tests.conftest import tiny_config


def test_a_loaded_split_is_shared_by_its_device_array_not_copied():
  dataset = data_lib.load(tiny_config().data)
  for images in (dataset.train_images, dataset.val_images):
    assert images.ctypes.data % data_lib.HOST_ALIGNMENT == 0
    on_device = jax.device_put(images)
    assert on_device.unsafe_buffer_pointer() == images.ctypes.data   # XLA:CPU adopted it: no second copy
    np.testing.assert_array_equal(np.asarray(on_device), images)


def test_a_loaded_split_is_read_only_so_no_one_changes_the_data_under_a_device_array():
  dataset = data_lib.load(tiny_config().data)
  with pytest.raises(ValueError, match="read-only"):
    dataset.train_images[0, 0, 0, 0] = 1


def test_held_once_copies_a_misaligned_array_into_an_aligned_one_with_the_same_values():
  raw = np.arange(2 * 4 * 4 * 3 + 1, dtype=np.uint8)
  misaligned = raw[1:].reshape(2, 4, 4, 3)   # one byte past numpy's own alignment
  assert misaligned.ctypes.data % data_lib.HOST_ALIGNMENT
  held = data_lib.held_once(misaligned)
  assert held.ctypes.data % data_lib.HOST_ALIGNMENT == 0 and not held.flags.writeable
  np.testing.assert_array_equal(held, misaligned)
  assert misaligned.flags.writeable   # the caller's array is left as it was


def test_host_images_are_aligned_for_every_shape_and_dtype():
  for shape, dtype in [((3, 5, 5, 1), np.uint8), ((1,), np.uint8), ((7, 2), np.float32)]:
    array = data_lib.host_images(shape, dtype)
    assert array.shape == shape and array.dtype == dtype
    assert array.ctypes.data % data_lib.HOST_ALIGNMENT == 0


def test_channel_stats_are_the_float64_mean_and_std_of_images_over_255_rounded_to_float32():
  images = np.random.default_rng(0).integers(0, 256, size=(300, 9, 7, 3), dtype=np.uint8)
  images[:, :, :, 2] //= 7   # channels with different spreads
  mean, std = data_lib.channel_stats(images, pixels_per_pass=64 * 63)
  x = images.astype(np.float64) / 255.0
  np.testing.assert_array_max_ulp(mean, x.mean(axis=(0, 1, 2)).astype(np.float32), maxulp=1)
  np.testing.assert_array_max_ulp(std, x.std(axis=(0, 1, 2)).astype(np.float32), maxulp=1)
  assert mean.dtype == std.dtype == np.float32


def test_channel_stats_do_not_depend_on_the_chunk_and_floor_a_constant_channel():
  images = np.random.default_rng(1).integers(0, 256, size=(50, 4, 4, 2), dtype=np.uint8)
  images[..., 1] = 200
  first = data_lib.channel_stats(images, pixels_per_pass=50 * 16)
  for pixels in (1, 16, 7 * 16 + 3, 1 << 21):
    np.testing.assert_array_equal(np.stack(data_lib.channel_stats(images, pixels_per_pass=pixels)), np.stack(first))
  assert first[1][1] == np.float32(1e-6)   # sqrt of the 1e-12 floor: a constant channel divides by 1e-6, not 0


def test_channel_stats_hold_no_float_copy_of_the_images():
  # The full Tiny ImageNet's float64 copy of a 4096-image chunk was 400 MB (twice, with its square), kept for the
  # whole run by the tuned allocator. Now a pass holds its pixels once as uint8 and once as int64 (bincount's copy):
  # 9 bytes a pixel, 0.6 MB here, below the uint8 images' own 1.5 MB (a float64 copy of them would be 12.6 MB).
  images = np.random.default_rng(2).integers(0, 256, size=(2048, 16, 16, 3), dtype=np.uint8)
  tracemalloc.start()
  try:
    data_lib.channel_stats(images, pixels_per_pass=1 << 16)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < images.nbytes, (peak, images.nbytes)
