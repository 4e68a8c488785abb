"""What the TFDS-backed sets share: prepare once (cached in data.data_dir), read a split into memory, no TF.

A split is read through `builder.as_data_source` (ArrayRecord; TensorFlow is never imported): the records are
deserialized with the image left as its encoded bytes, sorted by a per-example key (TFDS stores records in
hashed order; the data layer owns the order), then decoded with PIL into one preallocated uint8 array, with a
progress bar (on a terminal) and a one-line summary on stderr.
"""

import io
import os
import sys
import time

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from kdjax import progress
from kdjax.data import DataError
from kdjax.data import Dataset

READ_CHUNK = 4096


def builder_kwargs(data_config) -> dict:
  """data.data_dir (TFDS's default, ~/tensorflow_datasets or $TFDS_DATA_DIR, when empty); ArrayRecord files,
  which TFDS writes and reads without TensorFlow (its default, tfrecord, needs TensorFlow)."""
  data_dir = os.path.abspath(os.path.expanduser(data_config.data_dir)) if data_config.data_dir else None
  return {"data_dir": data_dir,
          "file_format": "array_record"}


def check_manual_dir(data_config) -> str | None:
  """data.manual_dir, expanded, checked to exist when given; None when empty."""
  if not data_config.manual_dir:
    return None
  manual_dir = os.path.abspath(os.path.expanduser(data_config.manual_dir))
  if not os.path.isdir(manual_dir):
    raise DataError(f"data.manual_dir: {manual_dir} does not exist")
  return manual_dir


def prepare(builder, manual_dir: str | None, source_errors: tuple = ()) -> float:
  """Builds the data set once; returns the seconds it took (0 when already prepared in builder.data_dir).

  TFDS writes into a temporary `incomplete.*` folder and renames it only on success (and removes it on
  failure), so a failed build leaves nothing a later run would trust. source_errors (one-line ValueErrors
  that name a path) become DataError.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if builder.is_prepared():
    return 0.0
  start = time.perf_counter()
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=config)
  except source_errors as error:
    raise DataError(str(error).splitlines()[0]) from None
  return time.perf_counter() - start


def decode_image(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
  """Encoded bytes -> uint8 [H, W, 3] (greyscale or CMYK converted to RGB, as TFDS/TF decode them)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode != "RGB":
      image = image.convert("RGB")
    array = np.asarray(image)
  if array.shape != shape:
    raise DataError(f"a stored image is {array.shape}, expected {shape}")
  return array


def read_split(builder, split: str, *, image_key: str, label_key: str, order_key: str,
               image_shape: tuple[int, int, int], description: str) -> tuple[np.ndarray, np.ndarray, float]:
  """(images uint8 [N, H, W, C], labels int32 [N], seconds), sorted by record[order_key]."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  try:
    source = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
  except NotImplementedError:
    raise DataError(f"{builder.data_dir}: prepared in a format other than array_record (by TensorFlow?); "
                    f"point data.data_dir elsewhere so it is rebuilt as array_record") from None
  count = len(source)
  encoded, labels, keys = [], np.empty(count, np.int32), []
  bar = tqdm(total=2 * count, desc=f"{description} {split}", unit="img", leave=False, file=sys.stderr,
             disable=None, mininterval=1.0)
  for chunk_start in range(0, count, READ_CHUNK):
    indices = list(range(chunk_start, min(chunk_start + READ_CHUNK, count)))
    for index, record in zip(indices, source.__getitems__(indices)):
      encoded.append(record[image_key])
      labels[index] = record[label_key]
      keys.append(record[order_key])
    bar.update(len(indices))
  order = sorted(range(count), key=keys.__getitem__)
  images = np.empty((count, *image_shape), np.uint8)
  for position, index in enumerate(order):
    images[position] = decode_image(encoded[index], image_shape)
    if position % 1024 == 1023:
      bar.update(1024)
  bar.close()
  seconds = time.perf_counter() - start
  progress.say(f"{description}: read {split} ({count:,} images) in {seconds:.1f} s "
               f"({count / max(seconds, 1e-9):,.0f} images/s)")
  return images, labels[order], seconds


def read_dataset(builder, name: str, *, splits: dict[str, str], order_key: str,
                 image_shape: tuple[int, int, int]) -> Dataset:
  """The prepared `builder` as a Dataset: splits maps "train"/"validation" to the builder's split names;
  images under "image", labels (a ClassLabel, whose names become the class names) under "label"."""
  read = {ours: read_split(builder, theirs, image_key="image", label_key="label", order_key=order_key,
                           image_shape=image_shape, description=name)
          for ours, theirs in splits.items()}
  return Dataset(name=name, train_images=read["train"][0], train_labels=read["train"][1],
                 val_images=read["validation"][0], val_labels=read["validation"][1],
                 class_names=tuple(builder.info.features["label"].names))
