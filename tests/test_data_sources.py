"""image_folder and cifar10/cifar100 (offline: fabricated files, no network), and models following the input."""

import io
import pathlib
import tarfile

import jax
import numpy as np
from PIL import Image
import pytest

from kdjax.config import defaults as config_lib
from kdjax import data as data_lib
from kdjax.nets import models
from kdjax.data import cifar


def data_config(name, manual_dir="", data_dir="", **overrides):
  config = config_lib.default_config()
  config.data.name = name
  config.data.manual_dir = str(manual_dir)
  config.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    config.data[key] = value
  return config.data


# --- image_folder -------------------------------------------------------------------------------------------

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


# --- cifar --------------------------------------------------------------------------------------------------

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


# --- models follow the data ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, num_classes", [((32, 32, 3), 10), ((64, 64, 3), 200)])
def test_models_follow_input_size_and_classes(shape, num_classes):
  for factory in models.MODEL_FACTORIES.values():
    net = factory(num_classes, "none", "pytorch")
    params = models.init_params(net, jax.random.PRNGKey(0), shape)
    logits = net.apply({"params": params}, np.zeros((2, *shape), np.float32))
    assert logits.shape == (2, num_classes)
