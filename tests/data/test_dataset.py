"""kdjax/data/__init__.py: a loaded data set's splits are held once (the device array shares their memory)."""

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
