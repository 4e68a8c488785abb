"""What the TFDS-backed sets share: prepare once (cached in data.data_dir), read a split into memory, no TF.

A split is read through `builder.as_data_source` (ArrayRecord; TensorFlow is never imported): the records are
deserialized with the image left as its encoded bytes, sorted by a per-example key (TFDS stores records in
hashed order; the data layer owns the order), then the examples kept (all, or data.max_*_examples' subset:
data.subset_indices) are decoded with PIL into one preallocated uint8 array. A line says what starts (preparing,
reading) and one what it took, through the kdjax logger; a progress bar shows on a terminal only.

TFDS's own output is kept out while kdjax prepares or reads (`quiet_tfds`): its notices on stdout (`Downloading
and preparing dataset Unknown size ...`, kdjax's own line says it instead), its log warnings while it looks for a
prepared set (`Variant folder ... has no dataset_info.json`) and, when stderr is not a terminal, its progress bars
(they would write carriage returns and cursor-up escapes into a log file).
"""

import contextlib
import io
import logging
import os
import socket
import sys
import time
import urllib.parse

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from kdjax import progress
from kdjax.data import DataError
from kdjax.data import host_images
from kdjax.data import Dataset
from kdjax.data import subset_indices

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


class _DropTfdsRecords(logging.Filter):
  """TFDS's absl log records below ERROR (INFO and WARNING: what it looks for and finds in data_dir)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "tensorflow_datasets" not in record.pathname.replace("\\", "/")


@contextlib.contextmanager
def quiet_tfds():
  """While inside: TFDS's log records below ERROR dropped, its stdout notices dropped, its progress bars shown
  only when stderr is a terminal (see the module docstring). Everything is restored after."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

  dropped = _DropTfdsRecords()
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(dropped)
  bars = getattr(tqdm_utils, "_active", True)
  if not progress._is_terminal(sys.stderr):   # pylint: disable=protected-access
    tqdm_utils.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tqdm_utils.display_progress_bar(bars)
    absl_logger.removeFilter(dropped)


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
  source = manual_dir or "a download"
  progress.say(f"{builder.name}: preparing the data set from {source} into {builder.data_dir} (once: later runs "
               f"read it back)...")
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  try:
    with quiet_tfds():
      builder.download_and_prepare(download_config=config)
  except source_errors as error:
    raise DataError(str(error).splitlines()[0]) from None
  seconds = time.perf_counter() - start
  progress.say(f"{builder.name}: prepared in {seconds:.1f} s")
  return seconds


def unreachable(url: str, timeout: float = 10.0) -> str | None:
  """Why `url`'s host cannot be reached (its name does not resolve, the connection is refused or times out), or
  None when it can, or when a proxy is set (the proxy may reach what this host cannot). Asked before a download:
  offline, TFDS's download manager retries for minutes before it gives up."""
  if any(os.environ.get(name) for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                                           "all_proxy", "ALL_PROXY")):
    return None
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=timeout).close()
  except OSError as error:
    return f"cannot reach {parts.hostname}: {error.strerror or error}"
  return None


def decode_image(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
  """Encoded bytes -> uint8 [H, W, 3] (greyscale or CMYK converted to RGB, as TFDS/TF decode them)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode != "RGB":
      image = image.convert("RGB")
    array = np.asarray(image)
  if array.shape != shape:
    raise DataError(f"a stored image is {array.shape}, expected {shape}")
  return array


def _records(source, indices: list[int], image_key: str, label_key: str, order_key: str) -> list[tuple]:
  """(encoded image, label, order key) of the records `indices`. From an ArrayRecord source, each record's
  serialized tf.train.Example (TFDS's storage format) is parsed for those three features only: ~1/10 of the time
  of TFDS's deserialization, which turns every feature (boxes, names, ...) into NumPy. The same values; TFDS's own
  path when the source is another kind or a feature is not stored plainly."""
  raw_source = getattr(source, "data_source", None)
  if raw_source is not None:
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    try:
      records = []
      for serialized in raw_source.__getitems__(indices):
        feature = tf_example_pb2.Example.FromString(serialized).features.feature
        image, label, key = feature[image_key].bytes_list.value, feature[label_key].int64_list.value, \
            feature[order_key]
        key = key.bytes_list.value or key.int64_list.value
        if len(image) != 1 or len(label) != 1 or len(key) != 1:
          raise KeyError(order_key)
        records.append((image[0], label[0], key[0]))
      return records
    except (KeyError, TypeError, ValueError, AttributeError):
      pass   # not stored as this reader expects: TFDS reads it
  return [(record[image_key], record[label_key], record[order_key]) for record in source.__getitems__(indices)]


def read_split(builder, split: str, *, image_key: str, label_key: str, order_key: str,
               image_shape: tuple[int, int, int], description: str,
               limit: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
  """(images uint8 [N, H, W, C], labels int32 [N], seconds), sorted by record[order_key]; with limit > 0, only
  the examples data.subset_indices keeps of the sorted split are decoded (the same examples, in the same order,
  as decoding all and taking the subset)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  try:
    source = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
  except NotImplementedError:
    raise DataError(f"{builder.data_dir}: prepared in a format other than array_record (by TensorFlow?); "
                    f"point data.data_dir elsewhere so it is rebuilt as array_record") from None
  count = len(source)
  keep = subset_indices(count, limit)
  kept = count if keep is None else len(keep)
  what = f"{split} ({kept:,} of {count:,} images)" if keep is not None else f"{split} ({count:,} images)"
  progress.say(f"{description}: reading {what}...")
  encoded, labels, keys = [], np.empty(count, np.int32), []
  bar = tqdm(total=count + kept, desc=f"{description} {split}", unit="img", leave=False, file=sys.stderr,
             disable=None, mininterval=1.0)
  for chunk_start in range(0, count, READ_CHUNK):
    indices = list(range(chunk_start, min(chunk_start + READ_CHUNK, count)))
    for index, (image, label, key) in zip(indices, _records(source, indices, image_key, label_key, order_key)):
      encoded.append(image)
      labels[index] = label
      keys.append(key)
    bar.update(len(indices))
  order = np.array(sorted(range(count), key=keys.__getitem__), dtype=np.int64)
  if keep is not None:
    order = order[keep]
  images = host_images((len(order), *image_shape))   # aligned: the study's device array shares it
  for position, index in enumerate(order):
    images[position] = decode_image(encoded[index], image_shape)
    if position % 1024 == 1023:
      bar.update(1024)
  bar.close()
  seconds = time.perf_counter() - start
  progress.say(f"{description}: read {what} in {seconds:.1f} s ({kept / max(seconds, 1e-9):,.0f} images/s)")
  return images, labels[order], seconds


def read_dataset(builder, name: str, *, splits: dict[str, str], order_key: str,
                 image_shape: tuple[int, int, int], limits: dict[str, int] | None = None) -> Dataset:
  """The prepared `builder` as a Dataset: splits maps "train"/"validation" to the builder's split names;
  images under "image", labels (a ClassLabel, whose names become the class names) under "label". limits:
  data.max_*_examples by "train"/"validation" (only those examples are decoded)."""
  limits = limits or {}
  read = {ours: read_split(builder, theirs, image_key="image", label_key="label", order_key=order_key,
                           image_shape=image_shape, description=name, limit=limits.get(ours, 0))
          for ours, theirs in splits.items()}
  return Dataset(name=name, train_images=read["train"][0], train_labels=read["train"][1],
                 val_images=read["validation"][0], val_labels=read["validation"][1],
                 class_names=tuple(builder.info.features["label"].names))


def limits(data_config) -> dict[str, int]:
  """data.max_train_examples / data.max_val_examples by split, for read_dataset."""
  return {"train": int(data_config.max_train_examples), "validation": int(data_config.max_val_examples)}
