"""The Tiny ImageNet builder and loader, on a fabricated miniature copy in the official layout (no network)."""

import io
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image
import pytest

from kdjax import data as data_lib
from kdjax.cli import data_info as data_cli
from kdjax.data import tfds_common
from kdjax.data import tiny_imagenet

from tests.support.tiny_imagenet import DEV_ZIP_DIR
from tests.support.tiny_imagenet import GREY_TRAIN
from tests.support.tiny_imagenet import TRAIN_PER_CLASS
from tests.support.tiny_imagenet import VAL_FILES
from tests.support.tiny_imagenet import VAL_WNIDS
from tests.support.tiny_imagenet import WNIDS
from tests.support.tiny_imagenet import _jpeg
from tests.support.tiny_imagenet import data_config
from tests.support.tiny_imagenet import fabricated_files
from tests.support.tiny_imagenet import write_folder
from tests.support.tiny_imagenet import write_zip

REPO = pathlib.Path(__file__).resolve().parents[3]


def expected_pixels(files, relpath) -> np.ndarray:
  with Image.open(io.BytesIO(files[relpath])) as image:
    return np.asarray(image.convert("RGB"))


def assert_fabricated(dataset, files):
  assert dataset.name == "tiny_imagenet"
  assert dataset.class_names == ("Egyptian cat", "reel", "goldfish, Carassius auratus")
  assert dataset.train_images.shape == (len(WNIDS) * TRAIN_PER_CLASS, 64, 64, 3)
  assert dataset.val_images.shape == (len(VAL_FILES), 64, 64, 3)
  assert dataset.train_images.dtype == np.uint8 and dataset.val_images.dtype == np.uint8
  assert dataset.train_labels.dtype == np.int32 and dataset.val_labels.dtype == np.int32
  # Train in file-name order: wnids sorted as text, then image number; label = line in wnids.txt.
  train_names = sorted(f"{w}_{i}.JPEG" for w in WNIDS for i in range(TRAIN_PER_CLASS))
  np.testing.assert_array_equal(dataset.train_labels, [WNIDS.index(n.split("_")[0]) for n in train_names])
  for index, name in enumerate(train_names):
    wnid = name.split("_")[0]
    np.testing.assert_array_equal(dataset.train_images[index], expected_pixels(files, f"train/{wnid}/images/{name}"))
  grey = dataset.train_images[train_names.index(GREY_TRAIN)]
  assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
  np.testing.assert_array_equal(dataset.val_labels, [WNIDS.index(w) for w in VAL_WNIDS])
  for index, name in enumerate(VAL_FILES):
    np.testing.assert_array_equal(dataset.val_images[index], expected_pixels(files, f"val/images/{name}"))


def assert_nothing_prepared(data_dir: pathlib.Path):
  """No prepared set (or half-written one) that a later run would trust."""
  builder = tiny_imagenet.make_builder(data_config("", data_dir))
  assert not builder.is_prepared()
  leftovers = list(data_dir.rglob("dataset_info.json")) + list(data_dir.rglob("*.array_record*"))
  assert not leftovers, leftovers
  assert not [p for p in data_dir.rglob("*") if "incomplete" in p.name]


def test_builds_from_zip_in_manual_dir(tmp_path):
  files = fabricated_files()
  write_zip(tmp_path / "manual", files)
  dataset = data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))
  assert_fabricated(dataset, files)
  builder = tiny_imagenet.make_builder(data_config("", tmp_path / "tfds"))
  assert builder.is_prepared()
  assert builder.info.splits["train"].num_examples == 12
  assert builder.info.splits["validation"].num_examples == 6
  assert list(builder.info.features["label"].names) == list(dataset.class_names)
  assert list((tmp_path / "tfds" / "tiny_imagenet" / "1.1.0").glob("*.array_record-*"))


def test_builds_from_extracted_folder_same_as_zip(tmp_path):
  files = fabricated_files()
  write_folder(tmp_path / "manual", files)
  from_folder = data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))
  assert_fabricated(from_folder, files)
  write_zip(tmp_path / "manual_zip", files)
  from_zip = data_lib.load(data_config(tmp_path / "manual_zip", tmp_path / "tfds_zip"))
  np.testing.assert_array_equal(from_folder.train_images, from_zip.train_images)
  np.testing.assert_array_equal(from_folder.val_labels, from_zip.val_labels)


def test_a_manual_dir_holding_another_copy_than_the_prepared_one_is_refused(tmp_path):
  files = fabricated_files()
  write_zip(tmp_path / "manual", files)
  data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))
  data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))          # the same copy: reused
  write_folder(tmp_path / "smaller", fabricated_files(drop=(f"train/{WNIDS[0]}/images/{WNIDS[0]}_3.JPEG",)))
  with pytest.raises(data_lib.DataError) as error:
    data_lib.load(data_config(tmp_path / "smaller", tmp_path / "tfds"))
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"data.manual_dir: {tmp_path / 'smaller'} holds 11 train / 6 ")
  assert f"{tmp_path / 'tfds'}" in message and "(12 train / 6 validation images, 3 classes)" in message
  assert "data.data_dir" in message
  assert data_lib.load(data_config("", tmp_path / "tfds")).train_images.shape[0] == 12   # no manual dir: the cache


def test_records_keep_file_name_and_box(tmp_path):
  write_zip(tmp_path / "manual", fabricated_files())
  builder, _ = tiny_imagenet.prepare(data_config(tmp_path / "manual", tmp_path / "tfds"))
  records = {r["file_name"]: r for r in builder.as_data_source(split="train")}
  record = records[b"n02124075_1.JPEG"]
  assert record["wnid"] == b"n02124075" and record["label"] == 0
  assert record["image"].shape == (64, 64, 3)   # TFDS's own decoder, no TF
  # box x0=1, y0=2, x1=51, y1=60 (inclusive pixels) -> (ymin, xmin, ymax, xmax) / 64
  np.testing.assert_allclose(record["bbox"], [2 / 64, 1 / 64, 61 / 64, 52 / 64], rtol=1e-6)
  assert records[GREY_TRAIN.encode()]["image"].shape == (64, 64, 3)


def test_cached_not_rebuilt_and_deterministic(tmp_path, monkeypatch):
  write_zip(tmp_path / "manual", fabricated_files())
  config = data_config(tmp_path / "manual", tmp_path / "tfds")
  first = data_lib.load(config)

  def no_rebuild(*args, **kwargs):
    raise AssertionError("the prepared data set was rebuilt")

  monkeypatch.setattr(tfds_common, "prepare", lambda builder, *a, **k: 0.0 if builder.is_prepared()
                      else no_rebuild())
  second = data_lib.load(config)
  np.testing.assert_array_equal(first.train_images, second.train_images)
  np.testing.assert_array_equal(first.train_labels, second.train_labels)
  np.testing.assert_array_equal(first.val_images, second.val_images)
  # The epoch order is the data layer's, from the seed alone.
  np.testing.assert_array_equal(data_lib.epoch_order(12, seed=3, epoch=2), data_lib.epoch_order(12, 3, 2))


def test_max_examples_subset(tmp_path):
  write_zip(tmp_path / "manual", fabricated_files())
  dataset = data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds", max_train_examples=5,
                                      max_val_examples=2))
  assert len(dataset.train_labels) == 5 and len(dataset.val_labels) == 2


def test_zip_that_is_not_tiny_imagenet(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  with zipfile.ZipFile(manual / "tiny-imagenet-200.zip", "w") as archive:
    archive.writestr("cats/cat.jpg", _jpeg(1))
  with pytest.raises(data_lib.DataError, match="tiny-imagenet-200.zip: zip holds no tiny-imagenet-200/") as error:
    data_lib.load(data_config(manual, tmp_path / "tfds"))
  assert "\n" not in str(error.value)
  assert_nothing_prepared(tmp_path / "tfds")


def test_truncated_zip(tmp_path):
  path = write_zip(tmp_path / "manual", fabricated_files())
  content = path.read_bytes()
  path.write_bytes(content[: len(content) // 2])
  with pytest.raises(data_lib.DataError, match=f"{path}: not a readable zip archive") as error:
    data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))
  assert "\n" not in str(error.value)
  assert_nothing_prepared(tmp_path / "tfds")


def test_missing_val_annotations_leaves_nothing_then_good_build(tmp_path):
  files = fabricated_files()
  folder = write_folder(tmp_path / "manual", fabricated_files(drop=("val/val_annotations.txt",)))
  config = data_config(tmp_path / "manual", tmp_path / "tfds")
  with pytest.raises(data_lib.DataError, match=f"{folder}/val/val_annotations.txt: missing") as error:
    data_lib.load(config)
  assert "\n" not in str(error.value)
  assert_nothing_prepared(tmp_path / "tfds")
  (folder / "val" / "val_annotations.txt").write_bytes(files["val/val_annotations.txt"])
  assert_fabricated(data_lib.load(config), files)


def test_damaged_image_mid_build_leaves_nothing(tmp_path):
  # Fails while TFDS is writing the train split: its temporary folder must go.
  files = fabricated_files()
  files["train/n04067472/images/n04067472_3.JPEG"] = b"not a jpeg"
  write_zip(tmp_path / "manual", files)
  with pytest.raises(data_lib.DataError, match="n04067472_3.JPEG: not a readable image"):
    data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


def test_manual_dir_that_does_not_exist(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(data_lib.DataError, match=f"data.manual_dir: {missing} does not exist"):
    data_lib.load(data_config(missing, tmp_path / "tfds"))


def test_manual_dir_without_the_archive(tmp_path):
  (tmp_path / "manual").mkdir()
  with pytest.raises(data_lib.DataError, match="data.manual_dir: .*manual: holds neither tiny-imagenet-200.zip nor an extracted"):
    data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


def test_download_failure_names_manual_dir(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def offline(self, url):
    raise ConnectionError(f"Failed to establish a new connection to {url}")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
  with pytest.raises(data_lib.DataError, match="could not download .*tiny-imagenet-200.zip.*data.manual_dir"):
    data_lib.load(data_config("", tmp_path / "tfds"))
  assert_nothing_prepared(tmp_path / "tfds")


def test_info_summary_and_cli_json(tmp_path):
  write_zip(tmp_path / "manual", fabricated_files())
  args = ["--config", str(REPO / "configs" / "ema.py"), "--config.data.name=tiny_imagenet",
          f"--config.data.manual_dir={tmp_path / 'manual'}", f"--config.data.data_dir={tmp_path / 'tfds'}"]
  result = subprocess.run([sys.executable, "-m", "kdjax.data", "info", *args, "--json"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout)
  assert summary["splits"]["train"] == {"examples": 12, "num_classes": 3, "image_shape": [64, 64, 3],
                                         "dtype": "uint8", "min_class_count": 4, "max_class_count": 4,
                                         "classes_present": 3}
  assert summary["splits"]["validation"]["examples"] == 6
  assert summary["splits"]["validation"]["min_class_count"] == 2
  assert summary["class_names"][0] == "Egyptian cat"
  text = data_cli.format_text(summary)
  assert "train" in text and "64x64x3 uint8" in text and "per class 4..4" in text


def test_info_bad_manual_dir_is_one_line(tmp_path, capsys):
  """The command's main in process (test_info_summary_and_cli_json runs it in a fresh one)."""
  args = ["info", "--config", str(REPO / "configs" / "ema.py"), "--config.data.name=tiny_imagenet",
          f"--config.data.manual_dir={tmp_path / 'nowhere'}", f"--config.data.data_dir={tmp_path / 'tfds'}"]
  assert data_cli.main(args) == 2
  assert capsys.readouterr().err.strip() == (f"kdjax.data: error: data.manual_dir: {tmp_path / 'nowhere'} does "
                                             f"not exist")


@pytest.mark.slow   # prepares the real 21,000-image archive into TFDS (decodes every JPEG): ~12 s on 2 cores
@pytest.mark.skipif(not (DEV_ZIP_DIR / "tiny-imagenet-200.zip").exists(),
                    reason=f"no dev subset at {DEV_ZIP_DIR}/tiny-imagenet-200.zip")
def test_dev_subset_from_shared_data(tmp_path):
  dataset = data_lib.load(data_config(DEV_ZIP_DIR, tmp_path / "tfds"))
  assert dataset.num_classes == 200
  assert dataset.train_images.shape == (16_000, 64, 64, 3) and dataset.val_images.shape == (5_000, 64, 64, 3)
  assert np.bincount(dataset.train_labels).tolist() == [80] * 200
  assert np.bincount(dataset.val_labels).tolist() == [25] * 200
  assert dataset.class_names[0] == "Egyptian cat"
