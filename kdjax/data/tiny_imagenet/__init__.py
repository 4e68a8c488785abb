"""Tiny ImageNet (200 classes, 64x64): the TFDS builder in this folder, read into memory without TF.

    --config.data.name=tiny_imagenet [--config.data.manual_dir=DIR] [--config.data.data_dir=CACHE]

data.manual_dir holds tiny-imagenet-200.zip or its extracted tiny-imagenet-200/ folder (offline); empty means
download the official archive (checked: size and md5). The prepared set (ArrayRecord, the source JPEG bytes) is
cached in data.data_dir (TFDS's default when empty) and reused by later runs; a data.manual_dir holding another
copy than the one prepared there is refused in one line (check_prepared_from). Examples are in file-name order
(train: by wnid then image number as text; validation: val_<n>.JPEG as text), whatever order TFDS stored them in.
Images are 64x64x3 uint8 (greyscale JPEGs decoded to 3 equal channels); data.image_size does not apply.
A load whose prepared classes are not the official 200 wnids says so in one warning line (official.py).
"""

from kdjax import data as data_lib
from kdjax import progress
from kdjax.data import tfds_common
from kdjax.data.tiny_imagenet import official
from kdjax.data.tiny_imagenet import source as source_lib


def make_builder(data_config):
  from kdjax.data.tiny_imagenet.tiny_imagenet_dataset_builder import Builder  # pylint: disable=g-import-not-at-top
  return Builder(**tfds_common.builder_kwargs(data_config))


def prepare(data_config):
  """The prepared builder (built now if needed) and the seconds building took (0 when cached)."""
  manual_dir = tfds_common.check_manual_dir(data_config)
  builder = make_builder(data_config)
  if manual_dir is not None and not builder.is_prepared():
    try:  # a manual dir that is given must hold the set: no download behind the user's back
      source_lib.find_in_manual_dir(manual_dir)
    except source_lib.SourceError as error:
      raise data_lib.DataError(f"data.manual_dir: {error}") from None
  elif manual_dir is not None and source_lib.holds_source(manual_dir):
    check_prepared_from(builder, manual_dir)
  seconds = tfds_common.prepare(builder, manual_dir, source_errors=(source_lib.SourceError,))
  return builder, seconds


def check_prepared_from(builder, manual_dir: str) -> None:
  """A prepared set is never rebuilt, so when data.manual_dir holds a copy whose classes or image counts differ
  from the prepared set's (e.g. the 16,000-image dev subset against a prepared full archive), a run would
  silently train on the other copy: DataError instead, naming both and the way out. The copy is listed, not
  decoded (its text files and file names)."""
  try:
    source = source_lib.TinyImageNetSource(source_lib.find_in_manual_dir(manual_dir))
  except source_lib.SourceError as error:
    raise data_lib.DataError(f"data.manual_dir: {error}") from None
  splits = builder.info.splits
  prepared = (splits["train"].num_examples, splits["validation"].num_examples,
              builder.info.features["label"].num_classes)
  given = (source.num_examples("train"), source.num_examples("validation"), len(source.wnids))
  wnids = (builder.info.metadata or {}).get("wnids")
  if prepared == given and (wnids is None or list(wnids) == list(source.wnids)):
    return
  describe = lambda counts: f"{counts[0]:,} train / {counts[1]:,} validation images, {counts[2]} classes"
  same_counts = " (the same counts, other classes)" if prepared == given else ""
  raise data_lib.DataError(
      f"data.manual_dir: {manual_dir} holds {describe(given)}, but {builder.data_dir} was prepared from another "
      f"copy ({describe(prepared)}){same_counts}; a prepared set is never rebuilt: set data.data_dir to another "
      f"folder to prepare this copy there, or leave data.manual_dir empty to use the prepared one")


def class_list_warning(builder) -> str | None:
  """One line when the prepared set's classes are not the official 200 wnids; None when they are.

  Checked on the prepared set, not the manual copy (a data.manual_dir that holds another copy is refused first:
  check_prepared_from).
  """
  wnids = (builder.info.metadata or {}).get("wnids")
  if wnids is None:  # a set prepared by hand or by another builder version: nothing to check against
    difference = f"{builder.info.features['label'].num_classes} classes, wnids not recorded"
  else:
    difference = official.difference(wnids)
  if difference is None:
    return None
  return f"tiny_imagenet: not the official class list: {difference}; prepared in {builder.data_dir}"


def load(data_config) -> data_lib.Dataset:
  with tfds_common.quiet_tfds():
    builder, _ = prepare(data_config)
    warning = class_list_warning(builder)
    if warning:
      progress.warn(warning)
    return tfds_common.read_dataset(builder, "tiny_imagenet",
                                    splits={"train": "train", "validation": "validation"},
                                    order_key="file_name", image_shape=source_lib.IMAGE_SHAPE,
                                    limits=tfds_common.limits(data_config))
