"""CIFAR-10 and CIFAR-100 (32x32) through TFDS's own builders, prepared and read without TensorFlow.

    --config.data.name=cifar10|cifar100 [--config.data.manual_dir=DIR] [--config.data.data_dir=CACHE]

TFDS's `cifar10`/`cifar100` builders download the official binary archives (checked against TFDS's registered
checksums) but extract and read them with tf.io and encode images with tf.image. kdjax uses them as they are
(same name, version, features, download and checksums, so the prepared set sits where TFDS would put it) and
replaces only the generation: the .tar.gz is read in memory with tarfile, the batches with NumPy, and TFDS is
handed PIL images (PNG, encoded by PIL). Offline: put
cifar-10-binary.tar.gz / cifar-100-binary.tar.gz in data.manual_dir, or point data.data_dir at a copy already
prepared as array_record. The TFDS `test` split is our validation split. Examples are in the archive's order
(ids train_00000, ...). Images are 32x32x3 uint8; data.image_size does not apply (the nets follow 32x32).
"""

import functools
import os
import tarfile

import numpy as np
from PIL import Image

from kdjax import data as data_lib
from kdjax.data import tfds_common

IMAGE_SHAPE = (32, 32, 3)
ARCHIVES = {  # name -> (archive file name, URL), as TFDS's cifar builders download them
    "cifar10": ("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
    "cifar100": ("cifar-100-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"),
}


def read_cifar_binary(content: bytes, labels_per_record: int, where: str = "CIFAR batch"):
  """Yields (labels uint8 [labels_per_record], image uint8 [32, 32, 3]) from a CIFAR binary batch file's bytes.

  Each record is labels_per_record label bytes, then 3072 bytes: the red, green and blue 32x32 planes.
  """
  data = np.frombuffer(content, np.uint8)
  record_size = labels_per_record + 3072
  if data.size % record_size:
    raise data_lib.DataError(f"{where}: {data.size} bytes is not a whole number of {record_size}-byte records")
  records = data.reshape(-1, record_size)
  images = records[:, labels_per_record:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  yield from zip(records[:, :labels_per_record], images)


def read_archive(path, prefix: str, names) -> dict[str, bytes]:
  """The named members of a CIFAR .tar.gz, read in memory (TFDS's extractor needs TensorFlow)."""
  wanted = {prefix + name: name for name in names}
  found = {}
  try:
    with tarfile.open(os.fspath(path), "r:gz") as archive:
      for member in archive:
        if member.name in wanted and member.isfile():
          found[wanted[member.name]] = archive.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as error:
    raise data_lib.DataError(f"{path}: not a readable .tar.gz ({error})") from None
  missing = sorted(set(names) - set(found))
  if missing:
    raise data_lib.DataError(f"{path}: missing {prefix}{missing[0]}")
  return found


@functools.cache
def builder_class(name: str):
  """TFDS's builder for `name` with TF-free generation (not registered: TFDS's own keeps the name)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top

  parent = {"cifar10": cifar.Cifar10, "cifar100": cifar.Cifar100}[name]
  with tfds.core.registered.skip_registration():

    class NoTensorFlowCifar(parent):  # pylint: disable=missing-class-docstring
      pass

  NoTensorFlowCifar.name = parent.name
  NoTensorFlowCifar.__name__ = NoTensorFlowCifar.__qualname__ = parent.__name__
  # TFDS finds registered checksums next to the builder's code; ours are TFDS's.
  NoTensorFlowCifar.url_infos = parent.url_infos
  NoTensorFlowCifar.code_path = parent.code_path

  def _split_generators(self, dl_manager):
    info = self._cifar_info
    archive = dl_manager.download(info.url)   # verified against TFDS's registered checksum
    members = read_archive(archive, info.prefix, [*info.train_files, *info.test_files, *info.label_files])
    for label_key, label_file in zip(info.label_keys, info.label_files):
      self.info.features[label_key].names = [n for n in members[label_file].decode().split("\n") if n]
    return {
        "train": self._generate_examples("train_", [(f, members[f]) for f in info.train_files]),
        "test": self._generate_examples("test_", [(f, members[f]) for f in info.test_files]),
    }

  def _generate_examples(self, split_prefix, batches):
    label_keys = self._cifar_info.label_keys
    index = 0  # the key, as TFDS's builder uses it
    for file_name, content in batches:
      for labels, image in read_cifar_binary(content, len(label_keys), file_name):
        record = {key: int(label) for key, label in zip(label_keys, labels)}
        record["id"] = f"{split_prefix}{index:05d}"
        record["image"] = Image.fromarray(image)   # encoded as PNG by PIL, not tf.image
        yield index, record
        index += 1

  NoTensorFlowCifar._split_generators = _split_generators  # pylint: disable=protected-access
  NoTensorFlowCifar._generate_examples = _generate_examples  # pylint: disable=protected-access
  return NoTensorFlowCifar


def make_builder(data_config):
  return builder_class(data_config.name)(**tfds_common.builder_kwargs(data_config))


def prepare(data_config):
  """The prepared builder and the seconds building took (0 when cached in data.data_dir)."""
  manual_dir = tfds_common.check_manual_dir(data_config)
  builder = make_builder(data_config)
  if builder.is_prepared():
    return builder, 0.0
  archive, url = ARCHIVES[data_config.name]
  if manual_dir is not None and not os.path.exists(os.path.join(manual_dir, archive)):
    raise data_lib.DataError(
        f"data.manual_dir: {manual_dir} holds no {archive} ({url}); put it there, or leave data.manual_dir "
        f"empty to download it, or set data.data_dir to where {data_config.name} is prepared")
  downloads = os.path.join(os.path.dirname(os.path.dirname(builder.data_dir)), "downloads")
  already = os.path.isdir(downloads) and any(archive.split(".")[0] in name for name in os.listdir(downloads))
  offline = None if manual_dir is not None or already else tfds_common.unreachable(url)
  if offline:   # say so now: TFDS's download manager would retry for minutes
    raise data_lib.DataError(
        f"{data_config.name}: could not download or prepare {url} into {builder.data_dir} ({offline}); offline, "
        f"put {archive} in data.manual_dir or set data.data_dir to where {data_config.name} is prepared")
  try:
    seconds = tfds_common.prepare(builder, manual_dir)
  except data_lib.DataError:
    raise
  except Exception as error:  # the download manager raises many types when offline
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    raise data_lib.DataError(
        f"{data_config.name}: could not download or prepare {url} into {builder.data_dir} ({reason}); offline, "
        f"put {archive} in data.manual_dir or set data.data_dir to where {data_config.name} is prepared") from None
  return builder, seconds


def load(data_config) -> data_lib.Dataset:
  with tfds_common.quiet_tfds():
    builder, _ = prepare(data_config)
  return tfds_common.read_dataset(builder, data_config.name, splits={"train": "train", "validation": "test"},
                                  limits=tfds_common.limits(data_config),
                                  order_key="id", image_shape=IMAGE_SHAPE)
