"""The embedded data set: scikit-learn's digits (1,797 real 8x8 handwritten digits, 10 classes).

It installs with a registry package, so the default study runs offline. Each 8x8 image (values 0..16) is
scaled to 0..255, resized bilinearly to data.image_size (64 by default, the original's input size) and repeated
to 3 channels. The train/validation split is fixed and stratified: 20 % validation (360), 80 % train (1,437).
"""

import pathlib

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from kdjax import data as data_lib
from kdjax import progress

VALIDATION_FRACTION = 0.2
SPLIT_SEED = 0


def _to_rgb(images_8x8: np.ndarray, size: int) -> np.ndarray:
  grey = np.round(images_8x8 * (255.0 / 16.0)).astype(np.uint8)
  resized = np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
                      for img in grey])
  return np.repeat(resized[..., None], 3, axis=-1)


def load(data_config) -> data_lib.Dataset:
  if data_config.get("manual_dir"):   # embedded: a path given for it reads nothing, which a user should know
    manual_dir = pathlib.Path(data_config.manual_dir).expanduser()
    progress.warn(f"data.manual_dir={data_config.manual_dir} is not read: data.name=digits is embedded"
                  f"{'' if manual_dir.exists() else ' (and that folder does not exist)'}; set data.name to "
                  f"read a data set from it")
  digits = load_digits()
  images = _to_rgb(digits.images, data_config.image_size)
  labels = digits.target.astype(np.int32)
  train_x, val_x, train_y, val_y = train_test_split(
      images, labels, test_size=VALIDATION_FRACTION, stratify=labels, random_state=SPLIT_SEED)
  return data_lib.Dataset(name="digits", train_images=train_x, train_labels=train_y,
                          val_images=val_x, val_labels=val_y,
                          class_names=tuple(str(name) for name in digits.target_names))
