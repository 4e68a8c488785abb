"""The docs a user reads hold together (issue 34): every relative link of README.md and docs/*.md resolves (a file
that exists; an #anchor that is one of the target's headings, slugged as GitHub slugs them), the config field table
of docs/study.md lists every field of the default config, and every config field a doc names exists."""

import importlib
import pathlib
import re
import unicodedata

import ml_collections
import pytest

from kdjax.config import defaults

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.MULTILINE)
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def without_code(text: str) -> str:
  """The text outside fenced blocks and code spans (a link there is not a link)."""
  return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
  """GitHub's anchor for a heading (github-slugger): the rendered text lower-cased, every character but letters,
  digits, '_', '-' and spaces dropped, each space a '-'."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link in a heading renders as its text
  text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
  return "".join("-" if char == " " else char for char in text
                 if char in "-_ " or unicodedata.category(char)[0] in "LNM")


def anchors(path: pathlib.Path) -> set[str]:
  """Every anchor GitHub makes in `path`: one per heading (a repeated slug gets -1, -2, ...) and HTML ids."""
  found, seen = set(), {}
  for _, heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
    base = slug(heading)
    count = seen.get(base, 0)
    seen[base] = count + 1
    found.add(base if count == 0 else f"{base}-{count}")
  return found | set(HTML_ID.findall(path.read_text(encoding="utf-8")))


def relative_links(path: pathlib.Path) -> list[str]:
  return [target for target in LINK.findall(without_code(path.read_text(encoding="utf-8")))
          if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]   # http:, https:, mailto: ...


def shown(path: pathlib.Path) -> str:
  return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: pathlib.Path) -> list[str]:
  broken = []
  for target in relative_links(path):
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    if not resolved.exists():
      broken.append(f"{target} (no file {shown(resolved)})")
    elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
      broken.append(f"{target} (no heading #{anchor} in {shown(resolved)})")
  return broken


def test_slugs_are_githubs():
  assert slug("What resume checks") == "what-resume-checks"
  assert slug("The study on the full data: 100,000 / 10,000") == "the-study-on-the-full-data-100000--10000"
  assert slug("`ema.py` and [TensorBoard](x.md)") == "emapy-and-tensorboard"
  assert slug("Speed (oneDNN)") == "speed-onednn"


def test_the_link_checker_finds_a_broken_link(tmp_path):
  (tmp_path / "docs").mkdir()
  page = tmp_path / "docs" / "page.md"
  page.write_text("# Top\n\n## Known section\n\n[ok](#known-section) [self](page.md#top) [bad](docs/page.md) "
                  "[gone](#tensorboard) `[code](nowhere.md)` [web](https://example.com)\n\n"
                  "```\n[in a block](nowhere.md)\n```\n")
  broken = broken_links(page)
  assert [entry.split(" ")[0] for entry in broken] == ["docs/page.md", "#tensorboard"]


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
  assert broken_links(path) == []


# Config fields ---------------------------------------------------------------------------------------------------

def config_fields(config=None, prefix: str = "") -> set[str]:
  config = defaults.default_config() if config is None else config
  fields = set()
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      fields |= config_fields(value, f"{prefix}{name}.")
    else:
      fields.add(prefix + name)
  return fields


SECTIONS = {name for name, value in defaults.default_config().items() if isinstance(value, ml_collections.ConfigDict)}


def study_table_fields() -> set[str]:
  """The fields docs/study.md's config table names in its first column: `a.b` / `a.c`, `a.b`, `.c` (a leading dot
  continues the previous field's section)."""
  text = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
  table = text[text.index("## Config fields"):]
  table = table[:table.index("\n\n", table.index("| field |"))]
  names = set()
  for row in table.splitlines()[3:]:
    section = ""
    for name in re.findall(r"`([^`]+)`", row.split("|")[1]):
      if name.startswith("."):
        name = section + name
      section = name.rpartition(".")[0]
      names.add(name)
  return names


def test_the_study_table_lists_every_config_field_and_no_other():
  table = study_table_fields()
  fields = config_fields()
  assert sorted(fields - table) == [], "config fields missing from docs/study.md's table"
  assert sorted(table - fields) == [], "docs/study.md's table names fields the config does not have"


def _is_code_not_a_field(name: str) -> bool:
  """`ema.py`, `data.epoch_order`: a file, or a function of the module named like the section."""
  if name.endswith((".py", ".md")):
    return True
  section, _, attribute = name.partition(".")
  for module in (f"kdjax.{section}", f"kdjax.training.{section}", f"kdjax.nets.{section}"):
    try:
      if hasattr(importlib.import_module(module), attribute.split(".")[0]):
        return True
    except ImportError:
      continue
  return False


def named_fields(path: pathlib.Path) -> set[str]:
  """The config fields a doc names: every `--config.FIELD` (in code blocks too), and every code span that is one
  dotted name starting with a config section (`ema.decay`), less files and module functions."""
  text = path.read_text(encoding="utf-8")
  names = set(re.findall(r"--config\.([A-Za-z_][\w.]*\w)", text))
  for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)):
    span = span.strip().split("=")[0]
    if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", span) and span.split(".")[0] in SECTIONS:
      names.add(span)
  return {name for name in names if not _is_code_not_a_field(name)}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_config_field_a_doc_names_exists(path):
  assert sorted(named_fields(path) - config_fields()) == []


def test_the_field_checker_sees_a_stale_field(tmp_path):
  page = tmp_path / "page.md"
  page.write_text("Set `ema.diagnostics_every` or run `--config.kd.alpha=0.5`; `data.epoch_order` is a function, "
                  "`kdjax/training/ema.py` a file, `ema.decay` a field.\n")
  assert named_fields(page) - config_fields() == {"ema.diagnostics_every", "kd.alpha"}


def test_the_tensorboard_page_gives_the_command_and_every_tag_written():
  from kdjax.store import tensorboard
  text = (ROOT / "docs" / "tensorboard.md").read_text(encoding="utf-8")
  assert "tensorboard --logdir" in text
  written = {*tensorboard.TRAIN_TAGS.values(), *tensorboard.VAL_TAGS.values(), tensorboard.STEP_LOSS_TAG,
             tensorboard.CONFIG_TAG}
  documented = set(re.findall(r"^\| `([a-z_]+/[a-z_0-9]+)` \|", text, re.MULTILINE))
  assert documented == written


def test_every_exit_code_row_names_a_test():
  """docs/failures.md's exit-code table: every row names tests, and each named test exists."""
  text = (ROOT / "docs" / "failures.md").read_text()
  rows = [line for line in text.split("## Exit codes", 1)[1].splitlines() if re.match(r"^\| (\d+) \|", line)]
  assert {row.split("|")[1].strip() for row in rows} == {"1", "2", "130", "143"}
  for row in rows:
    named = re.findall(r"`((?:\w+/)*test_\w+\.py)::(test_\w+)`", row.split("|")[3])
    assert named, row
    for file, test in named:
      assert re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE), f"{file}::{test}"


def test_every_dated_record_is_in_the_log_index():
  """docs/log/README.md lists every dated file of docs/log/ (a reader finds a record from the index)."""
  log = ROOT / "docs" / "log"
  index = (log / "README.md").read_text()
  missing = [path.name for path in sorted(log.glob("*.md")) if path.name != "README.md" and f"({path.name})" not in index]
  assert not missing, f"not in docs/log/README.md: {missing}"
