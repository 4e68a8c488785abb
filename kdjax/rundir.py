"""A run's directory: config.json at start, one JSON line per model and epoch in metrics.jsonl, and the
paths of everything else a run writes (checkpoints/, report.json, report.md, curves.png)."""

import json
import os
import pathlib

from kdjax.config import ConfigError


class WriteError(RuntimeError):
  """A file of the run that cannot be written (disk full, read-only); one line naming the path."""


def _write_failed(path, error: OSError) -> WriteError:
  return WriteError(f"cannot write {path}: {error.strerror or error}")


class RunDir:
  """WORKDIR, checked writable on creation (ConfigError naming `workdir` otherwise)."""

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      probe = self.path / ".write_probe"
      probe.write_text("")
      probe.unlink()
    except OSError as error:
      raise ConfigError(f"workdir: cannot write to {self.path}: {error.strerror or error}") from None

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.path / "checkpoints"

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.path / "metrics.jsonl"

  def file(self, name: str) -> pathlib.Path:
    return self.path / name

  def write_json(self, name: str, payload) -> pathlib.Path:
    """Writes atomically (temp file + rename), so a crash never leaves half a file."""
    return self._replace(self.path / name, json.dumps(payload, indent=2, sort_keys=False) + "\n")

  def _replace(self, target: pathlib.Path, text: str) -> pathlib.Path:
    temporary = target.with_suffix(target.suffix + ".tmp")
    try:
      temporary.write_text(text)
      os.replace(temporary, target)
    except OSError as error:
      temporary.unlink(missing_ok=True)
      raise _write_failed(target, error) from None
    return target

  def append_metrics(self, record: dict) -> None:
    try:
      with self.metrics_path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")
    except OSError as error:
      raise _write_failed(self.metrics_path, error) from None

  def rewrite_metrics(self, records: list[dict]) -> None:
    """Replaces metrics.jsonl by `records` (on resume: the rows of the saved epochs, so no epoch that is
    trained again appears twice). Nothing is created when there is no file and nothing to write."""
    if records or self.metrics_path.exists():
      self._replace(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))
