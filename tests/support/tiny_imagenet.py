"""A fabricated miniature Tiny ImageNet in the official layout (no network): its files, as a zip or a folder, and
the data config that reads it. DEV_ZIP_DIR is where a developer's copy of the real archive may lie."""

import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

from tests.support import ROOT
from tests.support import data

DEV_ZIP_DIR = ROOT.parent / "shared" / "data"
WNIDS = ("n02124075", "n04067472", "n01443537")
WORDS = {"n02124075": "Egyptian cat", "n04067472": "reel", "n01443537": "goldfish, Carassius auratus",
         "n00001740": "entity", "n09999999": "unused synset"}
TRAIN_PER_CLASS = 4
VAL_FILES = [f"val_{n}.JPEG" for n in range(6)]
VAL_WNIDS = ["n01443537", "n02124075", "n04067472", "n02124075", "n01443537", "n04067472"]
GREY_TRAIN = "n04067472_2.JPEG"   # decoded to 3 equal channels


def _jpeg(seed: int, grey: bool = False) -> bytes:
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (64, 64) if grey else (64, 64, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels, "L" if grey else "RGB").save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def fabricated_files(drop=()) -> dict[str, bytes]:
  """relpath under tiny-imagenet-200/ -> bytes; the real formats (TAB-separated, boxes, annotations)."""
  files = {
      "wnids.txt": "".join(f"{w}\n" for w in WNIDS).encode(),
      "words.txt": "".join(f"{w}\t{n}\n" for w, n in sorted(WORDS.items())).encode(),
  }
  seed = 0
  for wnid in WNIDS:
    boxes = []
    # Written out of order: the data layer, not the file system or TFDS, owns the order.
    for i in reversed(range(TRAIN_PER_CLASS)):
      name = f"{wnid}_{i}.JPEG"
      files[f"train/{wnid}/images/{name}"] = _jpeg(seed := seed + 1, grey=(name == GREY_TRAIN))
      boxes.append(f"{name}\t{i}\t2\t{50 + i}\t60\n")
    files[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()
  lines = []
  for name, wnid in zip(VAL_FILES, VAL_WNIDS):
    files[f"val/images/{name}"] = _jpeg(seed := seed + 1)
    lines.append(f"{name}\t{wnid}\t0\t1\t62\t63\n")
  files["val/val_annotations.txt"] = "".join(lines).encode()
  files["test/images/test_0.JPEG"] = _jpeg(999)   # unlabelled: not a split
  return {path: content for path, content in files.items() if path not in drop}


def write_zip(directory: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / "tiny-imagenet-200.zip"
  with zipfile.ZipFile(path, "w") as archive:
    for relpath, content in files.items():
      archive.writestr(f"tiny-imagenet-200/{relpath}", content)
  return path


def write_folder(directory: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
  for relpath, content in files.items():
    path = directory / "tiny-imagenet-200" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
  return directory / "tiny-imagenet-200"


def data_config(manual_dir, data_dir, **overrides):
  return data.data_config("tiny_imagenet", manual_dir, data_dir, **overrides)
