"""A run's directory: config.json at start, one JSON line per model and epoch in metrics.jsonl, and the
paths of everything else a run writes (checkpoints/, report.json, report.md, curves.png), and .lock, which a
running study holds (an fcntl lock: the OS releases it when the process ends, however it ends).

A study spread over tasks (kdjax/study/grid.py) holds WORKDIR/.lock shared (tasks together, never beside a
one-process run), each unit's own lock in its folder (SEED/units/<point>/.lock, `unit_dir`) and
WORKDIR/.merge.lock while it checks and merges; a unit's RunDir keeps its checkpoints in the seed's checkpoints/."""

import contextlib
import errno
import fcntl
import json
import os
import pathlib

from kdjax.errors import ConfigError
from kdjax.errors import WriteError  # noqa: F401  (rundir.WriteError)


class BusyError(ConfigError):
  """The lock is held by another live process (a second run of the workdir, another task's unit)."""


def _write_failed(path, error: OSError) -> WriteError:
  return WriteError(f"cannot write {path}: {error.strerror or error}")


def write_text_file(target, text: str) -> pathlib.Path:
  """Writes `text` to `target` atomically (temp file + rename: a crash never leaves half a file); WriteError
  naming it on failure."""
  target = pathlib.Path(target)
  # One temporary name per process: the tasks of a grid study may write the same file (config.json) at once.
  temporary = target.with_suffix(f"{target.suffix}.{os.getpid()}.tmp")
  try:
    temporary.write_text(text, encoding="utf-8")   # report.md holds Δ: UTF-8 whatever the locale says
    os.replace(temporary, target)
  except OSError as error:
    temporary.unlink(missing_ok=True)
    raise _write_failed(target, error) from None
  return target


class RunDir:
  """WORKDIR, checked writable on creation (ConfigError naming `workdir` otherwise). writer False (every
  process of a multi-host run but process 0): the lock, config.json and metrics.jsonl are process 0's; this
  process writes only its part of the checkpoints (Orbax)."""

  def __init__(self, path: str | os.PathLike, writer: bool = True, checkpoints: str | os.PathLike | None = None):
    self.writer = writer
    # a grid unit's run (kdjax/study/grid.py): its own folder for the lock, metrics and TensorBoard, its phases'
    # checkpoints in the seed's checkpoints/ beside the other units' (one folder per phase, one writer each)
    self._checkpoints = pathlib.Path(checkpoints) if checkpoints is not None else None
    if not str(path).strip():   # Path("") is the current directory: an unset shell variable would write there
      raise ConfigError(f"workdir: empty ({str(path)!r}; an unset shell variable?): give the run's directory, "
                        f"e.g. --workdir=runs/kd")
    self.path = pathlib.Path(path)
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      probe = self.path / f".write_probe.{os.getpid()}"
      probe.write_text("")
      probe.unlink()
    except OSError as error:
      raise ConfigError(f"workdir: cannot write to {self.path}: {error.strerror or error}") from None

  @contextlib.contextmanager
  def locked(self, name: str = ".lock", shared: bool = False, wait: bool = False):
    """Holds WORKDIR/`name` exclusively while the block runs, so two runs never share a workdir. A second
    run gets ConfigError naming the workdir and the holder's PID; a killed holder (even kill -9) leaves no
    stale lock, since the OS drops an flock with the process. `shared`: held beside other shared holders (the
    tasks of one grid study), never beside an exclusive one; `wait`: blocks until the lock is free."""
    if not self.writer:
      yield self
      return
    lock_path = self.path / name
    descriptor = self._acquire(lock_path, shared, wait)
    try:
      try:
        lock_path.write_text(f"{os.getpid()}\n")
      except OSError as error:
        raise ConfigError(f"workdir: cannot write to {self.path}: {error.strerror or error}") from None
      yield self
    finally:
      # A run that stopped before writing anything (a bad data path, say) leaves the workdir as it found it:
      # .lock goes while still held, so no other run can be holding it. Only the holder does this: a run refused
      # the lock removing the file would let the next one lock a new file beside the holder's.
      # (Not a shared lock: another holder may hold the same file.)
      with contextlib.suppress(OSError):
        if not shared and [entry.name for entry in self.path.iterdir()] == [name]:
          lock_path.unlink()
      os.close(descriptor)   # releases the lock

  def _acquire(self, lock_path: pathlib.Path, shared: bool, wait: bool) -> int:
    """A descriptor of `lock_path` holding its flock (BusyError when another run holds it). The lock counts only
    if the file is still the one at `lock_path` once locked: a holder that finished may have removed the file we
    opened (the `locked` clean-up), and a lock on that removed file would exclude nobody; then try again."""
    while True:
      try:
        # Held through a read-only descriptor (flock needs no write access), so that a filesystem can still be
        # remounted read-only under a run; the PID is written through a short-lived one.
        descriptor = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
      except OSError as error:
        raise ConfigError(f"workdir: cannot write to {self.path}: {error.strerror or error}") from None
      try:
        fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
      except OSError as error:
        os.close(descriptor)
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise ConfigError(f"workdir: cannot lock {lock_path}: {error.strerror or error}") from None
        holder = self.lock_holder(lock_path.name)
        raise BusyError(f"workdir {self.path.absolute()} is in use by another kdjax run (PID {holder}); "
                        f"wait for it to end, or use another workdir") from None
      try:
        if os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino:
          return descriptor
      except FileNotFoundError:
        pass
      os.close(descriptor)   # the file we locked was removed meanwhile: lock the one there now

  def lock_holder(self, name: str = ".lock") -> str:
    """The PID the last holder of WORKDIR/`name` wrote there ("unknown" if none)."""
    try:
      return (self.path / name).read_text().strip() or "unknown"
    except OSError:
      return "unknown"

  @property
  def checkpoints(self) -> pathlib.Path:
    return self._checkpoints if self._checkpoints is not None else self.path / "checkpoints"

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.path / "metrics.jsonl"

  def file(self, name: str) -> pathlib.Path:
    return self.path / name

  def write_json(self, name: str, payload) -> pathlib.Path:
    """Writes atomically (temp file + rename), so a crash never leaves half a file."""
    if not self.writer:
      return self.path / name
    return self._replace(self.path / name, json.dumps(payload, indent=2, sort_keys=False) + "\n")

  def write_text(self, name: str, text: str) -> pathlib.Path:
    """Writes a text file atomically, as write_json."""
    if not self.writer:
      return self.path / name
    return self._replace(self.path / name, text)

  def _replace(self, target: pathlib.Path, text: str) -> pathlib.Path:
    return write_text_file(target, text)

  def append_metrics(self, record: dict) -> None:
    if not self.writer:
      return
    try:
      with self.metrics_path.open("a") as stream:
        stream.write(json.dumps(record) + "\n")
    except OSError as error:
      raise _write_failed(self.metrics_path, error) from None

  def rewrite_metrics(self, records: list[dict]) -> None:
    """Replaces metrics.jsonl by `records` (on resume: the rows of the saved epochs, so no epoch that is
    trained again appears twice). Nothing is created when there is no file and nothing to write."""
    if self.writer and (records or self.metrics_path.exists()):
      self._replace(self.metrics_path, "".join(json.dumps(record) + "\n" for record in records))


def seed_dir(workdir, seed: int) -> pathlib.Path:
  """Where a several-seed run keeps seed `seed`'s own one-seed run: WORKDIR/seed_<seed>/."""
  return pathlib.Path(workdir) / f"seed_{seed}"


def read_report(path: pathlib.Path) -> tuple[dict | None, str | None]:
  """(report.json's content, None), or (None, one line saying why it cannot be read: a run killed while
  writing it by an older kdjax, a full disk, an edit)."""
  try:
    report = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError) as error:
    return None, f"{path}: cannot be read ({getattr(error, 'strerror', None) or error})"
  except ValueError as error:
    return None, (f"{path}: not valid JSON ({error}): truncated or damaged; rerun the run's command to write it "
                  f"again")
  if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
    return None, f"{path}: not a kdjax report (no \"models\" object)"
  return report, None


def _finished_report(path: pathlib.Path) -> dict:
  """read_report's content, or a ConfigError naming `path`."""
  if not path.is_file():
    raise ConfigError(f"{path}: no such file (not a finished run: its report is written last)")
  report, why = read_report(path)
  if report is None:
    raise ConfigError(why)
  return report


def read_seed_reports(workdir) -> tuple[list[int], list[dict]]:
  """(seeds, one report.json per seed) of a finished run: a several-seed workdir's seed_<s>/report.json in the
  order of its report's "seeds", or a one-seed workdir's own report. ConfigError naming a missing file."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"{workdir}: no such workdir")
  top = _finished_report(workdir / "report.json")
  if "seeds" not in top:
    return [int(top.get("config", {}).get("seed", 0))], [top]
  seeds = [int(seed) for seed in top["seeds"]]
  return seeds, [_finished_report(seed_dir(workdir, seed) / "report.json") for seed in seeds]


def unit_dir(seed_folder, point: str) -> pathlib.Path:
  """Where a grid task runs one unit (seed, sweep point) of a study (kdjax/study/grid.py): its lock, done.json,
  metrics.jsonl and TensorBoard in SEED_FOLDER/units/<point>/."""
  return pathlib.Path(seed_folder) / "units" / point
