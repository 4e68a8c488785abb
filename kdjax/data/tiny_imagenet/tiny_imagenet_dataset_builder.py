"""The TFDS builder for Tiny ImageNet (TFDS ships none): `tiny_imagenet`, stored as ArrayRecord, built without TF.

Source: the official archive tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip, 248,100,043
bytes, md5 90528d7ca1a48142e341f4ef8d21d0de), downloaded through TFDS's download manager and checked against that
size and md5; or, offline, the archive or its extracted `tiny-imagenet-200/` folder in the manual dir (a manual
copy may be re-packed, so its layout is validated instead of its checksum).

Layout read (see source.py): wnids.txt (label = line index), words.txt (class names),
train/<wnid>/images/*.JPEG with <wnid>_boxes.txt, val/images/*.JPEG labelled by val/val_annotations.txt.
test/ is unlabelled and not a split here. Features: image, label (ClassLabel, the words.txt names), wnid,
file_name, bbox (the annotated box; the whole image when a train image has no line in its boxes file).
The metadata (metadata.json beside the prepared set) records the source's wnids in label order, so a later
load can tell the official 200 classes from another copy's without the source (official.py).

Images are stored as the source's JPEG bytes, untouched (no re-encoding): the Image feature is declared
64x64x3, and TFDS decodes a greyscale JPEG to 3 equal channels, as TensorFlow does. Read it without TF with
`builder.as_data_source()`; kdjax.data.tiny_imagenet.load does that and sorts by file name.
"""

import hashlib

from etils import epath
import tensorflow_datasets as tfds

from kdjax.data import tfds_common
from kdjax.data.tiny_imagenet import source as source_lib

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE_SIZE = 248_100_043
ARCHIVE_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


class Builder(tfds.core.GeneratorBasedBuilder):
  """Tiny ImageNet: 200 classes, 100,000 train and 10,000 validation 64x64 colour images."""

  name = "tiny_imagenet"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release: train and validation, source JPEG bytes, boxes.",
                   "1.1.0": "The source's wnids (label order) in the metadata: a load says when they are not "
                            "the official 200."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Offline: put the official archive `{source_lib.ARCHIVE_NAME}` ({URL}) or its extracted
  `{source_lib.ROOT}/` folder in the manual dir (kdjax: --config.data.manual_dir=DIR). Online, with no
  manual dir, the archive is downloaded and checked against its size and md5.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")  # TFDS's default, tfrecord, needs TensorFlow
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Class names are only known once the source is read; ClassLabel gets them in _split_generators.
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=source_lib.IMAGE_SHAPE, encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(),  # names set from the source
            "wnid": tfds.features.Text(),
            "file_name": tfds.features.Text(),
            "bbox": tfds.features.BBoxFeature(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/",
        citation="Le, Y. and Yang, X. Tiny ImageNet Visual Recognition Challenge. CS231N, 2015.",
        license="For non-commercial research and educational use only (ImageNet terms of access).",
        metadata=tfds.core.MetadataDict(),  # "wnids": set from the source
    )

  def _locate(self, dl_manager) -> epath.Path:
    """The manual copy when the manual dir holds one (TFDS's default: <data_dir>/downloads/manual), else download."""
    manual_dir = dl_manager._manual_dir  # pylint: disable=protected-access  (TFDS keeps no public getter)
    if manual_dir is not None and source_lib.holds_source(manual_dir):
      return source_lib.find_in_manual_dir(manual_dir)
    offline = None if _downloaded(dl_manager) else tfds_common.unreachable(URL)
    if offline:   # say so now: TFDS's download manager would retry for minutes
      raise source_lib.SourceError(
          f"could not download {URL} ({offline}); offline, put {source_lib.ARCHIVE_NAME} or its extracted "
          f"{source_lib.ROOT}/ folder in the manual dir (kdjax: data.manual_dir; now {manual_dir})")
    try:
      archive = epath.Path(dl_manager.download(URL))
    except Exception as error:  # offline: the download manager raises many types
      reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
      raise source_lib.SourceError(
          f"could not download {URL} ({reason}); offline, put {source_lib.ARCHIVE_NAME} or its extracted "
          f"{source_lib.ROOT}/ folder in the manual dir (kdjax: data.manual_dir; now {manual_dir})") from None
    check_official_archive(archive)
    return archive

  def _split_generators(self, dl_manager):
    source = source_lib.TinyImageNetSource(self._locate(dl_manager))
    self.info.features["label"].names = list(source.class_names)
    self.info.metadata["wnids"] = list(source.wnids)
    return {
        "train": self._generate_examples(source, "train"),
        "validation": self._generate_examples(source, "validation"),
    }

  def _generate_examples(self, source, split):
    for record in source.records(split):
      yield record["file_name"], record


def check_official_archive(path: epath.Path) -> None:
  """The downloaded archive must be the official one (size and md5)."""
  size = path.stat().st_size
  digest = hashlib.md5()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  if size != ARCHIVE_SIZE or digest.hexdigest() != ARCHIVE_MD5:
    raise source_lib.SourceError(
        f"{path}: downloaded {URL} is {size} bytes, md5 {digest.hexdigest()}; expected {ARCHIVE_SIZE} bytes, "
        f"md5 {ARCHIVE_MD5}; delete it to download again")


def _downloaded(dl_manager) -> bool:
  """Whether TFDS's download folder already holds the archive (then no network is needed to prepare)."""
  folder = epath.Path(dl_manager._download_dir)  # pylint: disable=protected-access  (no public getter)
  stem = source_lib.ARCHIVE_NAME.removesuffix(".zip")
  return folder.is_dir() and any(stem in path.name and not path.name.endswith((".INFO", ".tmp"))
                                 for path in folder.iterdir())
