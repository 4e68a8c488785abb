"""Is a Tiny ImageNet class list the official one? Its wnids against the official archive's 200.

The official tiny-imagenet-200/wnids.txt lists 200 wnids. Their sorted list, one a line with a trailing newline,
hashes to OFFICIAL_WNIDS_SHA256 (in a shell: `LC_ALL=C sort wnids.txt | sha256sum`); the hash and the count are
all kdjax keeps of them. A manual copy can differ: the public copy in the GitHub repository rangeetpan/IMagenet
lists the official 200 and then two more classes, with images (docs/tiny-imagenet-full.md).
"""

import hashlib
from collections.abc import Sequence

OFFICIAL_NUM_CLASSES = 200
OFFICIAL_WNIDS_SHA256 = "342d6acf18911d62da4c981221f833718a3ef8299e55512239e09c64e49a344c"
SHOWN_EXTRA_WNIDS = 5


def wnids_sha256(wnids: Sequence[str]) -> str:
  """sha256 of the sorted wnids, one a line, each line ending in a newline (order-free: labels may differ)."""
  return hashlib.sha256("".join(f"{wnid}\n" for wnid in sorted(wnids)).encode()).hexdigest()


def is_official(wnids: Sequence[str]) -> bool:
  return len(wnids) == OFFICIAL_NUM_CLASSES and wnids_sha256(wnids) == OFFICIAL_WNIDS_SHA256


def difference(wnids: Sequence[str]) -> str | None:
  """None for the official 200 wnids (in any order); else, in a few words, how the list differs."""
  wnids = list(wnids)
  if is_official(wnids):
    return None
  if len(wnids) > OFFICIAL_NUM_CLASSES and is_official(wnids[:OFFICIAL_NUM_CLASSES]):
    # Labels are line numbers, so the official classes keep labels 0..199 and the extra ones come after.
    extra = wnids[OFFICIAL_NUM_CLASSES:]
    shown = ", ".join(extra[:SHOWN_EXTRA_WNIDS]) + (", ..." if len(extra) > SHOWN_EXTRA_WNIDS else "")
    return (f"{len(wnids)} classes: the official {OFFICIAL_NUM_CLASSES} wnids (labels 0-{OFFICIAL_NUM_CLASSES - 1}) "
            f"plus {len(extra)} more ({shown})")
  return (f"{len(wnids)} classes whose wnids are not the official {OFFICIAL_NUM_CLASSES} "
          f"(sorted-wnid sha256 {wnids_sha256(wnids)[:12]}, official {OFFICIAL_WNIDS_SHA256[:12]})")
