"""A user's own images: data.manual_dir is the root of `<root>/<split>/<class>/<image>`.

    --config.data.name=image_folder --config.data.manual_dir=ROOT [--config.data.image_size=64]

    ROOT/train/<class>/*.jpg|*.jpeg|*.png        the training split (required)
    ROOT/val/<class>/...  or  ROOT/validation/<class>/...   the validation split (required; one of the two)

Classes are the folder names under train/, sorted (label = index); every validation class must be one of them.
Each image is converted to RGB and resized (bilinear, aspect ratio not kept) to data.image_size squared.
Examples are in (class, file name) order. Read straight from the folders each run (no cache): meant for
sets small enough to hold in memory.
"""

import os
import sys
import time

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from kdjax import data as data_lib
from kdjax import progress

EXTENSIONS = (".jpg", ".jpeg", ".png")
VALIDATION_NAMES = ("val", "validation")


def _class_dirs(split_dir: str) -> list[str]:
  return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))


def _files(class_dir: str) -> list[str]:
  return sorted(entry.name for entry in os.scandir(class_dir)
                if entry.is_file() and entry.name.lower().endswith(EXTENSIONS))


def _read_image(path: str, size: int) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image = image.convert("RGB")
      if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
      return np.asarray(image)
  except Exception as error:  # PIL raises many types for a damaged file
    raise data_lib.DataError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None


def _read_split(split_dir: str, class_names: tuple[str, ...], size: int, split: str):
  label_of = {name: index for index, name in enumerate(class_names)}
  paths, labels = [], []
  for class_name in _class_dirs(split_dir):
    if class_name not in label_of:
      raise data_lib.DataError(f"{os.path.join(split_dir, class_name)}: class not in the train split")
    files = _files(os.path.join(split_dir, class_name))
    paths += [os.path.join(split_dir, class_name, name) for name in files]
    labels += [label_of[class_name]] * len(files)
  if not paths:
    raise data_lib.DataError(f"{split_dir}: no {'/'.join(EXTENSIONS)} images in <class>/ folders")
  start = time.perf_counter()
  images = data_lib.host_images((len(paths), size, size, 3))   # aligned: a device array shares it
  for index, path in enumerate(tqdm(paths, desc=f"image_folder {split}", unit="img", leave=False,
                                    file=sys.stderr, disable=None, mininterval=1.0)):
    images[index] = _read_image(path, size)
  seconds = time.perf_counter() - start
  progress.say(f"image_folder: read {split} ({len(paths):,} images) in {seconds:.1f} s")
  return images, np.asarray(labels, np.int32)


def load(data_config) -> data_lib.Dataset:
  root = os.path.expanduser(data_config.manual_dir)
  if not root:
    raise data_lib.DataError("data.manual_dir: must be the image folder's root (ROOT/train/<class>/*.jpg)")
  if not os.path.isdir(root):
    raise data_lib.DataError(f"data.manual_dir: {root} does not exist")
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise data_lib.DataError(f"{train_dir}: missing (expected ROOT/train/<class>/*.jpg)")
  val_dirs = [os.path.join(root, name) for name in VALIDATION_NAMES if os.path.isdir(os.path.join(root, name))]
  if len(val_dirs) != 1:
    raise data_lib.DataError(f"{root}: needs exactly one of val/ or validation/ beside train/, found "
                             f"{len(val_dirs)}")
  class_names = tuple(_class_dirs(train_dir))
  if not class_names:
    raise data_lib.DataError(f"{train_dir}: no class folders")
  for class_name in class_names:
    if not _files(os.path.join(train_dir, class_name)):
      raise data_lib.DataError(f"{os.path.join(train_dir, class_name)}: no {'/'.join(EXTENSIONS)} images")
  size = data_config.image_size
  train_images, train_labels = _read_split(train_dir, class_names, size, "train")
  val_images, val_labels = _read_split(val_dirs[0], class_names, size, "validation")
  return data_lib.Dataset(name="image_folder", train_images=train_images, train_labels=train_labels,
                          val_images=val_images, val_labels=val_labels, class_names=class_names)
