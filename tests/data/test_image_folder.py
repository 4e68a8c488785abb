"""A folder of class folders (kdjax/data/image_folder.py)."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from kdjax import data as data_lib

from tests.support.data import data_config


def _write_image(path: pathlib.Path, size, mode="RGB", seed=0, fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
  pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  Image.fromarray(pixels, mode).save(path, format=fmt)


def make_image_folder(root: pathlib.Path, val_name="val"):
  _write_image(root / "train" / "dog" / "b.jpg", (40, 30), seed=1)
  _write_image(root / "train" / "dog" / "a.png", (64, 64), seed=2)
  _write_image(root / "train" / "cat" / "z.JPEG", (80, 80), mode="L", seed=3)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  _write_image(root / val_name / "dog" / "v1.jpg", (64, 64), seed=4)
  _write_image(root / val_name / "cat" / "v2.png", (20, 20), seed=5)
  return root


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_image_folder_loads_resized_in_class_then_file_order(tmp_path, val_name):
  root = make_image_folder(tmp_path / "images", val_name)
  dataset = data_lib.load(data_config("image_folder", manual_dir=root, image_size=32))
  assert dataset.class_names == ("cat", "dog")
  assert dataset.train_images.shape == (3, 32, 32, 3) and dataset.train_images.dtype == np.uint8
  np.testing.assert_array_equal(dataset.train_labels, [0, 1, 1])   # cat/z, dog/a.png, dog/b.jpg
  np.testing.assert_array_equal(dataset.val_labels, [0, 1])
  with Image.open(root / "train" / "dog" / "a.png") as image:
    expected = np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR))
  np.testing.assert_array_equal(dataset.train_images[1], expected)
  grey = dataset.train_images[0]
  assert np.array_equal(grey[..., 0], grey[..., 2])


def test_image_folder_errors_name_the_path(tmp_path):
  with pytest.raises(data_lib.DataError, match="data.manual_dir: must be the image folder's root"):
    data_lib.load(data_config("image_folder"))
  with pytest.raises(data_lib.DataError, match=f"data.manual_dir: {tmp_path / 'none'} does not exist"):
    data_lib.load(data_config("image_folder", manual_dir=tmp_path / "none"))
  root = make_image_folder(tmp_path / "images")
  _write_image(root / "val" / "bird" / "x.jpg", (64, 64))
  with pytest.raises(data_lib.DataError, match=f"{root / 'val' / 'bird'}: class not in the train split"):
    data_lib.load(data_config("image_folder", manual_dir=root))
  only_train = make_image_folder(tmp_path / "no_val")
  for path in sorted((only_train / "val").rglob("*"), reverse=True):
    path.unlink() if path.is_file() else path.rmdir()
  (only_train / "val").rmdir()
  with pytest.raises(data_lib.DataError, match="needs exactly one of val/ or validation/"):
    data_lib.load(data_config("image_folder", manual_dir=only_train))
  broken = make_image_folder(tmp_path / "broken")
  (broken / "train" / "dog" / "c.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(data_lib.DataError, match=f"{broken / 'train' / 'dog' / 'c.jpg'}: not a readable image"):
    data_lib.load(data_config("image_folder", manual_dir=broken))
