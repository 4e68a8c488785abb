"""Reads the Tiny ImageNet layout from the official zip or its extracted folder, and validates it.

    tiny-imagenet-200/wnids.txt                               one wnid a line; label = line index
    tiny-imagenet-200/words.txt                               wnid<TAB>names (all ImageNet synsets)
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG
    tiny-imagenet-200/train/<wnid>/<wnid>_boxes.txt           file<TAB>x0<TAB>y0<TAB>x1<TAB>y1
    tiny-imagenet-200/val/images/val_<n>.JPEG
    tiny-imagenet-200/val/val_annotations.txt                 file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1

Every problem is a SourceError whose one-line message names the path. Records come in file-name order.
"""

import io
import os
import posixpath
import zipfile

from etils import epath
from PIL import Image

import tensorflow_datasets as tfds

ARCHIVE_NAME = "tiny-imagenet-200.zip"
ROOT = "tiny-imagenet-200"
IMAGE_SIZE = 64
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


class SourceError(ValueError):
  """The manual dir or archive does not hold a readable Tiny ImageNet; one line naming the path."""


def find_in_manual_dir(manual_dir) -> epath.Path:
  """The archive or the extracted folder inside manual_dir (the folder wins: no unzip needed)."""
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir():
    raise SourceError(f"{manual_dir}: manual dir does not exist")
  if (manual_dir / ROOT).is_dir():
    return manual_dir / ROOT
  if (manual_dir / ARCHIVE_NAME).exists():
    return manual_dir / ARCHIVE_NAME
  raise SourceError(f"{manual_dir}: holds neither {ARCHIVE_NAME} nor an extracted {ROOT}/ folder "
                    f"(download it from http://cs231n.stanford.edu/{ARCHIVE_NAME})")


def holds_source(manual_dir) -> bool:
  manual_dir = epath.Path(manual_dir)
  return (manual_dir / ROOT).is_dir() or (manual_dir / ARCHIVE_NAME).exists()


class _ZipTree:
  """Files under ROOT/ inside the zip."""

  def __init__(self, path: epath.Path):
    self.path = path
    try:
      self._zip = zipfile.ZipFile(path)
      names = self._zip.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
      raise SourceError(f"{path}: not a readable zip archive ({error})") from None
    self.files = {name[len(ROOT) + 1:] for name in names
                  if name.startswith(ROOT + "/") and not name.endswith("/")}
    if not self.files:
      raise SourceError(f"{path}: zip holds no {ROOT}/ folder: not the Tiny ImageNet archive")

  def read(self, relpath: str) -> bytes:
    try:
      return self._zip.read(f"{ROOT}/{relpath}")
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as error:
      raise SourceError(f"{self.path}: cannot read {ROOT}/{relpath} ({error})") from None

  def describe(self, relpath: str) -> str:
    return f"{self.path}: {ROOT}/{relpath}"


class _FolderTree:
  """Files under an extracted ROOT folder."""

  def __init__(self, path: epath.Path):
    self.path = path
    root = os.fspath(path)
    self.files = {os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                  for folder, _, names in os.walk(root) for name in names}

  def read(self, relpath: str) -> bytes:
    try:
      return (self.path / relpath).read_bytes()
    except OSError as error:
      raise SourceError(f"{self.path / relpath}: cannot read ({error})") from None

  def describe(self, relpath: str) -> str:
    return str(self.path / relpath)


def _lines(tree, relpath: str) -> list[list[str]]:
  if relpath not in tree.files:
    raise SourceError(f"{tree.describe(relpath)}: missing: not a Tiny ImageNet layout")
  try:
    text = tree.read(relpath).decode("utf-8")
  except UnicodeDecodeError as error:
    raise SourceError(f"{tree.describe(relpath)}: not UTF-8 text ({error})") from None
  return [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip()]


def _box(fields: list[str], where: str) -> tuple[int, int, int, int]:
  try:
    x0, y0, x1, y1 = (int(v) for v in fields)
  except ValueError:
    raise SourceError(f"{where}: bad box {fields!r}") from None
  return x0, y0, x1, y1


def _bbox_feature(box) -> tfds.features.BBox:
  """Pixel box (x0, y0, x1, y1), inclusive, in a 64x64 image -> TFDS's normalised (ymin, xmin, ymax, xmax)."""
  x0, y0, x1, y1 = (min(max(v, 0), IMAGE_SIZE - 1) for v in box)
  x0, x1 = sorted((x0, x1))
  y0, y1 = sorted((y0, y1))
  return tfds.features.BBox(ymin=y0 / IMAGE_SIZE, xmin=x0 / IMAGE_SIZE,
                            ymax=(y1 + 1) / IMAGE_SIZE, xmax=(x1 + 1) / IMAGE_SIZE)


class TinyImageNetSource:
  """The validated layout: wnids, class names, and per split a sorted list of (relpath, wnid, box)."""

  def __init__(self, path):
    path = epath.Path(path)
    if not path.exists():
      raise SourceError(f"{path}: does not exist")
    self.tree = _FolderTree(path) if path.is_dir() else _ZipTree(path)
    self.wnids = tuple(fields[0].strip() for fields in _lines(self.tree, "wnids.txt"))
    if not self.wnids or len(set(self.wnids)) != len(self.wnids):
      raise SourceError(f"{self.tree.describe('wnids.txt')}: empty or repeated wnids")
    words = {fields[0].strip(): fields[1].strip() for fields in _lines(self.tree, "words.txt")
             if len(fields) >= 2}
    missing = [w for w in self.wnids if w not in words]
    if missing:
      raise SourceError(f"{self.tree.describe('words.txt')}: no names for wnids {missing[:3]}")
    self.class_names = _unique_names([words[w] for w in self.wnids], self.wnids)
    self.label_of = {wnid: index for index, wnid in enumerate(self.wnids)}
    self._examples = {"train": self._train_examples(), "validation": self._val_examples()}

  def _train_examples(self):
    examples = []
    images_of: dict[str, list[str]] = {}   # train/<wnid>/images/<...> by wnid, in one pass over the listing
    for relpath in self.tree.files:
      parts = relpath.split("/", 3)
      if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and _is_jpeg(relpath):
        images_of.setdefault(parts[1], []).append(relpath)
    for wnid in self.wnids:
      boxes_path = f"train/{wnid}/{wnid}_boxes.txt"
      boxes = {}
      if boxes_path in self.tree.files:
        boxes = {f[0]: _box(f[1:5], self.tree.describe(boxes_path)) for f in _lines(self.tree, boxes_path)}
      prefix = f"train/{wnid}/images/"
      images = sorted(images_of.get(wnid, ()))
      if not images:
        raise SourceError(f"{self.tree.describe(prefix)}: no training images for class {wnid}")
      for relpath in images:
        examples.append((relpath, wnid, boxes.get(posixpath.basename(relpath))))
    return examples

  def _val_examples(self):
    annotations_path = "val/val_annotations.txt"
    examples = []
    for fields in _lines(self.tree, annotations_path):
      where = self.tree.describe(annotations_path)
      if len(fields) < 2:
        raise SourceError(f"{where}: bad line {fields!r}")
      file_name, wnid = fields[0].strip(), fields[1].strip()
      if wnid not in self.label_of:
        raise SourceError(f"{where}: {file_name} has wnid {wnid} not in wnids.txt")
      relpath = f"val/images/{file_name}"
      if relpath not in self.tree.files:
        raise SourceError(f"{self.tree.describe(relpath)}: listed in val_annotations.txt but missing")
      box = _box(fields[2:6], where) if len(fields) >= 6 else None
      examples.append((relpath, wnid, box))
    if not examples:
      raise SourceError(f"{self.tree.describe(annotations_path)}: no validation images listed")
    return sorted(examples)

  def num_examples(self, split: str) -> int:
    return len(self._examples[split])

  def records(self, split: str):
    """TFDS records in file-name order; each image is decoded once to check it is a 64x64 picture."""
    for relpath, wnid, box in self._examples[split]:
      data = self.tree.read(relpath)
      image_bytes = _checked_image_bytes(data, self.tree.describe(relpath))
      yield {
          "image": image_bytes,
          "label": self.label_of[wnid],
          "wnid": wnid,
          "file_name": posixpath.basename(relpath),
          "bbox": _bbox_feature(box if box is not None else (0, 0, IMAGE_SIZE - 1, IMAGE_SIZE - 1)),
      }


def _is_jpeg(relpath: str) -> bool:
  return relpath.lower().endswith((".jpeg", ".jpg"))


def _checked_image_bytes(data: bytes, where: str) -> bytes:
  """The JPEG bytes unchanged when greyscale or RGB; other modes (e.g. CMYK) re-encoded losslessly as RGB PNG."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        raise SourceError(f"{where}: image is {image.size[0]}x{image.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
      if image.mode in ("L", "RGB"):
        return data
      buffer = io.BytesIO()
      image.convert("RGB").save(buffer, format="PNG")
      return buffer.getvalue()
  except SourceError:
    raise
  except Exception as error:  # PIL raises many types for a damaged file
    raise SourceError(f"{where}: not a readable image ({type(error).__name__}: {error})") from None


def _unique_names(names: list[str], wnids) -> tuple[str, ...]:
  """words.txt names; a name shared by two classes gets its wnid appended (ClassLabel needs unique names)."""
  counts = {}
  for name in names:
    counts[name] = counts.get(name, 0) + 1
  return tuple(name if counts[name] == 1 else f"{name} ({wnid})" for name, wnid in zip(names, wnids))
