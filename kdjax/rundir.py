"""A run's directory: config.json at start, one JSON line per model and epoch in metrics.jsonl, and the
paths of everything else a run writes (checkpoints/, report.json, report.md, curves.png)."""

import json
import os
import pathlib

from kdjax.config import ConfigError


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
    target = self.path / name
    temporary = target.with_suffix(target.suffix + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(temporary, target)
    return target

  def append_metrics(self, record: dict) -> None:
    with self.metrics_path.open("a") as stream:
      stream.write(json.dumps(record) + "\n")

  def read_metrics(self) -> list[dict]:
    if not self.metrics_path.exists():
      return []
    return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
