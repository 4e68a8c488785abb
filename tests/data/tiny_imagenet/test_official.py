"""A Tiny ImageNet whose classes are not the official 200 wnids is named in one warning line, never an error."""

import hashlib
import logging
import pathlib
import subprocess
import zipfile

import pytest

from kdjax import data as data_lib
from kdjax.data import tiny_imagenet
from kdjax.data.tiny_imagenet import official
from tests.support.tiny_imagenet import _jpeg
from tests.support.tiny_imagenet import data_config
from tests.support.tiny_imagenet import write_folder

REPO = pathlib.Path(__file__).resolve().parents[3]
DEV_ZIP = REPO.parent / "shared" / "data" / "tiny-imagenet-200.zip"
needs_dev_zip = pytest.mark.skipif(not DEV_ZIP.exists(), reason=f"no dev subset at {DEV_ZIP} (its wnids.txt is "
                                                                 f"the official list)")
FAKE_OFFICIAL = tuple(f"n9{i:07d}" for i in range(200))   # stands in for the official list where patched
EXTRA = ("n02480855", "n10148035")                         # the two extra classes of the public 202-wnid copy
MARK = "not the official class list"


def official_wnids() -> list[str]:
  with zipfile.ZipFile(DEV_ZIP) as archive:
    return archive.read("tiny-imagenet-200/wnids.txt").decode().split()


def layout(wnids) -> dict[str, bytes]:
  """The official layout, tiny: one training image per class, two validation images."""
  files = {"wnids.txt": "".join(f"{w}\n" for w in wnids).encode(),
           "words.txt": "".join(f"{w}\tclass {w}\n" for w in wnids).encode()}
  for index, wnid in enumerate(wnids):
    files[f"train/{wnid}/images/{wnid}_0.JPEG"] = _jpeg(index)
    files[f"train/{wnid}/{wnid}_boxes.txt"] = f"{wnid}_0.JPEG\t0\t0\t63\t63\n".encode()
  files["val/images/val_0.JPEG"] = _jpeg(1000)
  files["val/images/val_1.JPEG"] = _jpeg(1001)
  files["val/val_annotations.txt"] = (f"val_0.JPEG\t{wnids[0]}\t0\t0\t63\t63\n"
                                      f"val_1.JPEG\t{wnids[-1]}\t0\t0\t63\t63\n").encode()
  return files


@pytest.fixture
def fake_official(monkeypatch):
  monkeypatch.setattr(official, "OFFICIAL_WNIDS_SHA256", official.wnids_sha256(FAKE_OFFICIAL))


def warnings_in(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and MARK in r.getMessage()]


def test_wnids_hash_is_the_shell_one():
  # `LC_ALL=C sort wnids.txt | sha256sum`: sorted, one a line, a newline after each; order-free.
  wnids = ["n02", "n10", "n01"]
  assert official.wnids_sha256(wnids) == hashlib.sha256(b"n01\nn02\nn10\n").hexdigest()
  assert official.wnids_sha256(wnids) == official.wnids_sha256(sorted(wnids))


def test_difference_names_count_and_extras(fake_official):
  assert official.difference(FAKE_OFFICIAL) is None
  assert official.difference(FAKE_OFFICIAL[::-1]) is None   # the same set in another label order
  assert official.difference(FAKE_OFFICIAL + EXTRA) == (
      "202 classes: the official 200 wnids (labels 0-199) plus 2 more (n02480855, n10148035)")
  many = tuple(f"n8{i:07d}" for i in range(7))
  assert official.difference(FAKE_OFFICIAL + many).endswith(f"plus 7 more ({', '.join(many[:5])}, ...)")
  # Extras first (labels shifted), a subset, or a swapped class: not the official list, without detail.
  for wnids in (EXTRA + FAKE_OFFICIAL, FAKE_OFFICIAL[:199], FAKE_OFFICIAL[:199] + EXTRA[:1]):
    assert official.difference(wnids).startswith(f"{len(wnids)} classes whose wnids are not the official 200 ")


@needs_dev_zip
def test_the_official_list_matches_the_embedded_hash():
  wnids = official_wnids()
  assert len(wnids) == 200 and official.is_official(wnids) and official.difference(wnids) is None
  assert official.difference(wnids + list(EXTRA)).startswith("202 classes: the official 200 wnids")


def test_load_warns_once_for_202_classes_none_for_200(tmp_path, caplog, fake_official):
  write_folder(tmp_path / "copy202", layout(FAKE_OFFICIAL + EXTRA))
  write_folder(tmp_path / "copy200", layout(FAKE_OFFICIAL))
  with caplog.at_level(logging.WARNING):
    dataset = data_lib.load(data_config(tmp_path / "copy202", tmp_path / "tfds202"))
  assert dataset.num_classes == 202 and len(dataset.train_labels) == 202   # read as it is: a warning, not a crash
  assert warnings_in(caplog) == [f"tiny_imagenet: {MARK}: 202 classes: the official 200 wnids (labels 0-199) "
                                 f"plus 2 more (n02480855, n10148035); "
                                 f"prepared in {tmp_path}/tfds202/tiny_imagenet/1.1.0"]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    dataset = data_lib.load(data_config(tmp_path / "copy200", tmp_path / "tfds200"))
  assert dataset.num_classes == 200 and not warnings_in(caplog)
  # The 200-class copy is not what tfds202 was prepared from: refused (a prepared set is never rebuilt), and
  # the prepared 202-class set, read without a manual dir, still warns.
  with pytest.raises(data_lib.DataError, match=r"copy200 holds 200 train / 2 validation images, 200 classes, but "):
    data_lib.load(data_config(tmp_path / "copy200", tmp_path / "tfds202"))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    dataset = data_lib.load(data_config("", tmp_path / "tfds202"))
  assert dataset.num_classes == 202 and len(warnings_in(caplog)) == 1


def test_prepared_without_wnids_says_so(tmp_path, caplog, fake_official):
  write_folder(tmp_path / "copy", layout(FAKE_OFFICIAL))
  builder, _ = tiny_imagenet.prepare(data_config(tmp_path / "copy", tmp_path / "tfds"))
  assert tiny_imagenet.class_list_warning(builder) is None
  (builder.data_path / "metadata.json").unlink()
  builder = tiny_imagenet.make_builder(data_config("", tmp_path / "tfds"))
  assert tiny_imagenet.class_list_warning(builder).startswith(f"tiny_imagenet: {MARK}: 200 classes, wnids not recorded")


def info_args(manual_dir, data_dir) -> list[str]:
  return ["info", "--config", str(REPO / "configs" / "ema.py"), "--config.data.name=tiny_imagenet",
          f"--config.data.manual_dir={manual_dir}", f"--config.data.data_dir={data_dir}"]


def info_in_process(manual_dir, data_dir, capsys) -> subprocess.CompletedProcess:
  """`python -m kdjax.data info ...`'s result, from the command's main in this process."""
  from kdjax.cli import data_info
  args = info_args(manual_dir, data_dir)
  capsys.readouterr()
  code = data_info.main(args)
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(args, code, out, err)


@needs_dev_zip
def test_info_cli_one_line_for_202_none_for_official(tmp_path, capsys):
  wnids = tuple(official_wnids())
  write_folder(tmp_path / "copy202", layout(wnids + EXTRA))
  write_folder(tmp_path / "copy200", layout(wnids))
  # The command's main in process: its fresh process is test_dataset_builder.py::test_info_summary_and_cli_json.
  result = info_in_process(tmp_path / "copy202", tmp_path / "tfds202", capsys)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("tiny_imagenet: 202 classes")
  lines = [line for line in result.stderr.splitlines() if MARK in line]
  assert len(lines) == 1 and lines[0].endswith(
      f"202 classes: the official 200 wnids (labels 0-199) plus 2 more (n02480855, n10148035); "
      f"prepared in {tmp_path}/tfds202/tiny_imagenet/1.1.0")
  result = info_in_process(tmp_path / "copy200", tmp_path / "tfds200", capsys)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("tiny_imagenet: 200 classes") and MARK not in result.stderr
