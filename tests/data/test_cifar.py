"""CIFAR-10/100 (kdjax/data/cifar.py), from a fabricated archive, without TensorFlow or a network."""

import io
import pathlib
import tarfile

import numpy as np
import pytest

from kdjax import data as data_lib
from kdjax.data import cifar

from tests.support.data import data_config


def test_cifar_binary_reader_planes_to_hwc(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  record = np.concatenate([[7], image.transpose(2, 0, 1).reshape(-1)]).astype(np.uint8)
  content = np.concatenate([record, record]).tobytes()
  rows = list(cifar.read_cifar_binary(content, 1))
  assert len(rows) == 2 and rows[0][0].tolist() == [7]
  np.testing.assert_array_equal(rows[1][1], image)
  with pytest.raises(data_lib.DataError, match="data_batch_1.bin: .* not a whole number of 3073-byte records"):
    list(cifar.read_cifar_binary(content[:-5], 1, "data_batch_1.bin"))


def test_cifar_offline_manual_dir_without_archive(tmp_path):
  (tmp_path / "manual").mkdir()
  with pytest.raises(data_lib.DataError) as error:
    data_lib.load(data_config("cifar10", tmp_path / "manual", tmp_path / "tfds"))
  message = str(error.value)
  assert "\n" not in message and "data.manual_dir" in message and "cifar-10-binary.tar.gz" in message
  assert "data.data_dir" in message


def test_cifar_offline_download_failure(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def offline(self, *args, **kwargs):
    raise ConnectionError("Failed to establish a new connection")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
  with pytest.raises(data_lib.DataError, match="cifar100: could not download or prepare .*cifar-100-binary.tar.gz"
                     ".*data.manual_dir.*data.data_dir") as error:
    data_lib.load(data_config("cifar100", "", tmp_path / "tfds"))
  assert "\n" not in str(error.value)
  assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


def _fabricated_cifar10_archive(directory: pathlib.Path, per_batch: int) -> tuple[pathlib.Path, dict]:
  rng = np.random.default_rng(0)
  members, batches = {}, {}
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    labels = rng.integers(0, 10, (per_batch, 1), dtype=np.uint8)
    planes = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    members[name] = np.concatenate([labels, planes], axis=1).tobytes()
    batches[name] = (labels[:, 0], planes.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  members["batches.meta.txt"] = "\n".join(
      ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", ""]).encode()
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / "cifar-10-binary.tar.gz"
  with tarfile.open(path, "w:gz") as archive:
    for name, content in members.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(content)
      archive.addfile(info, io.BytesIO(content))
  return path, batches


def test_cifar10_builds_from_manual_archive_without_tf(tmp_path, monkeypatch):
  from tensorflow_datasets.core.download import checksums

  archive, batches = _fabricated_cifar10_archive(tmp_path / "manual", per_batch=3)
  builder_class = cifar.builder_class("cifar10")
  url = cifar.ARCHIVES["cifar10"][1]
  assert url in builder_class.url_infos   # TFDS's registered checksum of the real archive
  fabricated = checksums.compute_url_info(archive)
  monkeypatch.setattr(builder_class, "url_infos", {url: checksums.UrlInfo(
      size=fabricated.size, checksum=fabricated.checksum, filename=archive.name)})
  dataset = data_lib.load(data_config("cifar10", tmp_path / "manual", tmp_path / "tfds"))
  assert dataset.class_names[:2] == ("airplane", "automobile") and dataset.num_classes == 10
  assert dataset.train_images.shape == (15, 32, 32, 3) and dataset.val_images.shape == (3, 32, 32, 3)
  train_labels = np.concatenate([batches[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
  train_images = np.concatenate([batches[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
  np.testing.assert_array_equal(dataset.train_labels, train_labels)   # the archive's order
  np.testing.assert_array_equal(dataset.train_images, train_images)   # PNG: lossless
  np.testing.assert_array_equal(dataset.val_images, batches["test_batch.bin"][1])
  assert (tmp_path / "tfds" / "cifar10" / "3.0.2" / "dataset_info.json").exists()
