"""What a TFDS set costs and says when it is read (issue 34): data.max_*_examples decode only the examples kept
(the same examples as decoding all and taking the subset), a line says what starts before each wait, TFDS's own
notices, warnings and bars stay out of non-terminal output, and an offline download fails at once."""

import logging
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kdjax import data as data_lib
from kdjax import progress
from kdjax.data import tfds_common
from kdjax.data import tiny_imagenet
from tests.support.tiny_imagenet import data_config
from tests.support.tiny_imagenet import fabricated_files
from tests.support.tiny_imagenet import write_zip


@pytest.fixture
def prepared(tmp_path):
  """A fabricated Tiny ImageNet (12 train / 6 validation images) prepared in tmp_path/tfds."""
  write_zip(tmp_path / "manual", fabricated_files())
  tiny_imagenet.prepare(data_config(tmp_path / "manual", tmp_path / "tfds"))
  return tmp_path


def test_the_subset_is_the_same_and_only_it_is_decoded(prepared, monkeypatch):
  full = data_lib.load(data_config(prepared / "manual", prepared / "tfds"))
  decoded = []
  original = tfds_common.decode_image
  monkeypatch.setattr(tfds_common, "decode_image", lambda data, shape: decoded.append(1) or original(data, shape))
  subset = data_lib.load(data_config(prepared / "manual", prepared / "tfds", max_train_examples=5,
                                     max_val_examples=2))
  assert len(decoded) == 5 + 2   # not 12 + 6
  train_keep, val_keep = data_lib.subset_indices(12, 5), data_lib.subset_indices(6, 2)
  np.testing.assert_array_equal(subset.train_images, full.train_images[train_keep])
  np.testing.assert_array_equal(subset.train_labels, full.train_labels[train_keep])
  np.testing.assert_array_equal(subset.val_images, full.val_images[val_keep])
  np.testing.assert_array_equal(subset.val_labels, full.val_labels[val_keep])


def test_records_parsed_directly_equal_tfds_own_deserialization(prepared):
  builder = tiny_imagenet.make_builder(data_config("", prepared / "tfds"))
  source = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
  assert source.data_source is not None   # the direct path is the one taken

  class TfdsOnly:   # the same records through TFDS's deserialization only
    def __getitems__(self, indices):
      return source.__getitems__(indices)

  indices = list(range(len(source)))
  direct = tfds_common._records(source, indices, "image", "label", "file_name")
  through_tfds = tfds_common._records(TfdsOnly(), indices, "image", "label", "file_name")
  assert direct == through_tfds


def test_each_wait_is_announced_as_it_starts_and_tfds_noise_is_kept_out(tmp_path, capfd, caplog):
  write_zip(tmp_path / "manual", fabricated_files())
  lines = []

  class Lines(logging.Handler):
    def emit(self, record):
      if record.levelno == logging.INFO:   # the run's lines (a warning about the fabricated classes aside)
        lines.append(record.getMessage())

  handler = Lines(level=logging.INFO)
  progress.LOGGER.addHandler(handler)
  progress.LOGGER.setLevel(logging.INFO)
  try:
    with caplog.at_level(logging.INFO):
      data_lib.load(data_config(tmp_path / "manual", tmp_path / "tfds", max_train_examples=5))
  finally:
    progress.LOGGER.removeHandler(handler)
    progress.LOGGER.setLevel(logging.NOTSET)
  assert lines[0].startswith("tiny_imagenet: preparing the data set from ")
  assert lines[1].startswith("tiny_imagenet: prepared in ")
  assert lines[2] == "tiny_imagenet: reading train (5 of 12 images)..."
  assert lines[3].startswith("tiny_imagenet: read train (5 of 12 images) in ")
  assert lines[4] == "tiny_imagenet: reading validation (6 images)..."
  assert lines[5].startswith("tiny_imagenet: read validation (6 images) in ")
  out, err = capfd.readouterr()
  for noise in ("Downloading and preparing", "Variant folder", "Generating", "\x1b[A", "\r"):
    assert noise not in out and noise not in err, noise
  assert not [record for record in caplog.records if "tensorflow_datasets" in record.pathname
              and record.levelno < logging.ERROR]


def test_quiet_tfds_restores_what_it_changed():
  from tensorflow_datasets.core.utils import tqdm_utils
  before = (tqdm_utils._active, list(logging.getLogger("absl").filters))
  with tfds_common.quiet_tfds():
    pass
  assert (tqdm_utils._active, list(logging.getLogger("absl").filters)) == before


def test_offline_download_fails_at_once_without_the_download_manager(tmp_path, monkeypatch):
  for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(name, raising=False)

  def no_network(address, timeout=None):
    raise OSError(-2, "Name or service not known")

  def download(*args, **kwargs):
    raise AssertionError("the download manager was asked (it retries for minutes offline)")

  monkeypatch.setattr(tfds_common.socket, "create_connection", no_network)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
  start = time.perf_counter()
  with pytest.raises(data_lib.DataError) as error:
    data_lib.load(data_config("", tmp_path / "tfds"))
  assert time.perf_counter() - start < 30
  message = str(error.value)
  assert "\n" not in message and "cannot reach cs231n.stanford.edu" in message and "manual dir" in message


def test_unreachable_leaves_a_proxy_to_try(monkeypatch):
  monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
  monkeypatch.setattr(tfds_common.socket, "create_connection",
                      lambda *a, **k: (_ for _ in ()).throw(AssertionError("probed behind a proxy")))
  assert tfds_common.unreachable("https://example.com/x.zip") is None


def test_a_manual_dir_without_the_archive_reads_the_prepared_set(prepared):
  """As docs/data.md says: once prepared, data.manual_dir is checked only when it holds a copy; a folder without
  one (the archive moved away) reads the prepared set."""
  (prepared / "moved").mkdir()
  dataset = data_lib.load(data_config(prepared / "moved", prepared / "tfds"))
  assert len(dataset.train_labels) == 12
