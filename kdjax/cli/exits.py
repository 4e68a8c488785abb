"""What every command-line entry point shares (kdjax.main, kdjax.data, kdjax.cli.inspection, kdjax.tools.benchmark,
parity.check, parity.export): one error printer, one exit-code table, one way to find a config by name, and a
stderr they can read.

Library modules raise one-line errors (kdjax/errors.py); the CLIs print them as `PROG: error: MESSAGE` and exit
with the code of EXIT_CODES: 2 for a usage error, 1 for a run that broke, 130 for Ctrl-C, 143 for SIGTERM (the
cases: docs/failures.md). After a failed Orbax read TensorStore's threads print tracebacks about a closed event
loop, during the read and at interpreter teardown; `quiet_stderr` drops the first kind and `exit_now` skips the
second, so the one line stays the last thing a user reads.
"""

import io
import logging
import os
import signal
import sys
import threading
import warnings
from typing import NoReturn

from absl import flags

from kdjax import errors
from kdjax.config import lookup


class _DropClosedLoopTracebacks(io.TextIOBase):
  """sys.stderr, less the tracebacks "RuntimeError: Event loop is closed" that TensorStore prints from its
  own threads when a read finishes after Orbax gave up on a broken checkpoint (its asyncio loop is closed
  by then). They say nothing the one-line CheckpointError does not, and they would bury it."""

  _START = "Traceback (most recent call last):"

  def __init__(self, stream):
    self.stream = stream
    self.pending: dict[int, str] = {}
    self.lock = threading.Lock()

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self.stream.write(text)
    with self.lock:
      ident = threading.get_ident()
      buffered = self.pending.pop(ident, "") + text
      if not buffered.startswith(self._START[:len(buffered)]) or (
          not buffered.startswith(self._START) and "\n" in buffered):
        return self.stream.write(buffered)
      last = buffered.splitlines()[-1] if buffered.endswith("\n") else ""
      if last and not last.startswith((" ", "Traceback")):   # the traceback's final "Kind: message" line
        if last.strip() != "RuntimeError: Event loop is closed":
          self.stream.write(buffered)
        return len(text)
      self.pending[ident] = buffered
      return len(text)

  def flush(self) -> None:
    self.stream.flush()

  def fileno(self) -> int:
    return self.stream.fileno()

  def isatty(self) -> bool:  # progress bars go to a terminal only
    return self.stream.isatty()

  @property
  def encoding(self):
    return self.stream.encoding


class _DropOrbaxThreadErrors(logging.Filter):
  """Drops Orbax's log records "_SignalingThread.run() raised an exception" (with their ~55-line tracebacks,
  one per worker thread) when a save fails, e.g. on a full disk: the same exception reaches the main thread,
  where ModelCheckpoints.save turns it into the one-line CheckpointError naming the checkpoint."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not ("_SignalingThread.run() raised an exception" in str(record.msg)
                and "orbax" in record.pathname.replace("\\", "/"))


class _DropOrbaxTaskErrors(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" records (each with its traceback, ~20 lines) for Orbax's
  restore tasks: when a checkpoint cannot be read, the first failing array read reaches the main thread, which
  turns it into the one-line CheckpointError, and the tasks of the other arrays fail alike unread; asyncio logs
  each when it is garbage-collected, sometimes before the process ends (seen once in a CI run: 386 lines of
  stderr for a truncated checkpoint). Records whose task failed outside Orbax pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not str(record.msg).startswith("Task exception was never retrieved") or not record.exc_info:
      return True
    traceback = record.exc_info[2]
    while traceback is not None:
      if "/orbax/" in traceback.tb_frame.f_code.co_filename.replace("\\", "/"):
        return False
      traceback = traceback.tb_next
    return True


def tolerant_output() -> None:
  """stdout and stderr write what their encoding lacks as backslash escapes (Δ as \\u0394) instead of raising:
  under PYTHONIOENCODING=ascii or a latin-1 terminal a report line or a path with such a character would
  otherwise end the command with a UnicodeEncodeError (files are written as UTF-8 regardless)."""
  for stream in (sys.stdout, sys.stderr):
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
      try:
        stream.reconfigure(errors="backslashreplace")
      except (ValueError, OSError):   # a closed or detached stream: nothing will be written to it
        pass


# The warning Python prints when a coroutine is garbage-collected unawaited: after a failed read Orbax leaves
# TensorStore's metadata coroutines ("coroutine 'Store._get_array_metadatas' was never awaited"), printed, or not,
# whenever the collector runs, two lines after the one-line CheckpointError.
UNAWAITED_COROUTINE = r"coroutine '.*' was never awaited"


def quiet_stderr() -> None:
  """For the command-line entry points: see _DropClosedLoopTracebacks, _DropOrbaxThreadErrors,
  _DropOrbaxTaskErrors and UNAWAITED_COROUTINE; and tolerant_output."""
  tolerant_output()
  warnings.filterwarnings("ignore", message=UNAWAITED_COROUTINE, category=RuntimeWarning)
  if not isinstance(sys.stderr, _DropClosedLoopTracebacks):
    sys.stderr = _DropClosedLoopTracebacks(sys.stderr)
  for name, kind in (("absl", _DropOrbaxThreadErrors), ("asyncio", _DropOrbaxTaskErrors)):
    logger = logging.getLogger(name)
    if not any(isinstance(known, kind) for known in logger.filters):
      logger.addFilter(kind())


def exit_now(code: int) -> None:
  """Ends the process after a one-line error, skipping the interpreter's teardown: after a failed read,
  TensorStore can leave callbacks for Orbax's closed asyncio loop that print tracebacks at exit, which would
  bury the one line. Nothing is left to write when this is called."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said
      pass
  os._exit(code)


OK = 0              # done
BROKE = 1           # a run that broke (or a tool that showed what it could and names what is bad)
USAGE = 2           # a usage error: what the user gave is wrong
INTERRUPTED = 130   # the shell's code for a process ended by SIGINT (128 + 2)
TERMINATED = 143    # ... and by SIGTERM (128 + 15)


class UsageError(Exception):
  """A command line that cannot run; the message is one line."""


# (error types, exit code), the first row that matches wins; docs/failures.md's table lists each case.
# 2, a usage error: what the user gave is wrong (a config value or file, a data path, a checkpoint the user named
#    as teacher.checkpoint, a workdir that holds another run or cannot be written, a command line);
# 1, a run that broke: a diverging loss, the workdir's own checkpoints unreadable, a file that cannot be written.
EXIT_CODES = (((errors.ConfigError, errors.DataError, errors.TeacherCheckpointError, UsageError), USAGE),
              ((errors.DivergenceError, errors.CheckpointError, errors.WriteError), BROKE))


def exit_code(error: BaseException, given: tuple = ()) -> int | None:
  """The exit code of a known error (EXIT_CODES; any other OSError: 1), None for an unknown one.

  given: the error kinds that name what the user gave at this entry point, so 2 there: kdjax.cli.inspection's
  CheckpointError is the path the user asked it to read (another path fixes it), where a run's own saves are 1."""
  if given and isinstance(error, given):
    return USAGE
  code = next((code for kinds, code in EXIT_CODES if isinstance(error, kinds)), None)
  if code is None and isinstance(error, OSError):
    code = BROKE
  return code


def say_error(prog: str, message) -> None:
  """The one error printer: `PROG: error: MESSAGE` on stderr, the message on one line."""
  print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def usage_error(prog: str, message) -> NoReturn:
  """say_error, then exit 2: the command line asked for what cannot run."""
  say_error(prog, message)
  sys.exit(USAGE)


def flag_values(define) -> flags.FlagValues:
  """A fresh absl FlagValues holding the flags `define(values)` defines (each DEFINE_* with flag_values=values):
  an entry point whose main(argv) a test calls more than once parses into its own, never into the process-wide
  flags.FLAGS, so no value of one call is left for the next."""
  values = flags.FlagValues()
  define(values)
  return values


def parse_flags(prog: str, argv: list[str], config_flag: str | None = "config",
                config_required: bool = True, values: flags.FlagValues | None = None) -> list[str]:
  """absl's flag parsing for an entry point, with kdjax's rules: `--config` takes a shipped config's name
  (ema.py, ema, configs/ema.py) from any folder or a file's path (kdjax.config.lookup), every
  `--config.FIELD=...` must name a real field, and a mistake is usage_error's one line (absl's own prints a
  usage hint and exits 1). values: the FlagValues to parse into (flag_values; default flags.FLAGS). Returns
  absl's remaining argv (the program and any positional arguments)."""
  try:
    if config_flag is not None:
      given = lookup.given(argv, config_flag)
      if given is None and config_required:
        raise UsageError(f"--{config_flag} is required: one of "
                         f"{', '.join(f'{name}.py' for name in lookup.available())} or a config file (see --help)")
      if given is not None:
        config = lookup.load(given)   # ml_collections loads it again; loaded here for one clear line
        argv = lookup.resolve_flag(argv, config_flag)
        for field in lookup.overridden_fields(argv, config_flag):
          lookup.check_field(config, field, where=f"--{config_flag}", listing="--show_config lists them all"
                             if prog == "kdjax" else "kdjax.main --show_config lists them all")
    return (flags.FLAGS if values is None else values)(argv)
  except (UsageError, errors.ConfigError, flags.Error) as error:
    usage_error(prog, error)


def describe(error: BaseException) -> str:
  """The one line that a known error prints (an OSError as `path: reason`)."""
  if isinstance(error, OSError) and not isinstance(error, (BrokenPipeError,)):
    return f"{error.filename or ''}: {error.strerror or error}"
  return str(error)


class Terminated(KeyboardInterrupt):
  """SIGTERM (a batch scheduler's or `kill`'s stop), raised in the main thread like Ctrl-C's KeyboardInterrupt
  so that the same cleanup runs (the progress meter, the workdir lock) and run_main says how to resume."""


def _raise_terminated(signum, frame):
  raise Terminated()


def _on_sigterm():
  """Installs the SIGTERM handler where it can be (the main thread); returns what to restore, or None."""
  if threading.current_thread() is not threading.main_thread():
    return None
  return signal.signal(signal.SIGTERM, _raise_terminated)


def run_main(prog: str, body, given: tuple = (), resumable: bool = True) -> int:
  """Runs `body()` and returns the exit code: an int that body returns (a tool that showed what it could but names
  something bad: 1), else 0; or a known error's (`exit_code`) after `PROG: error: ONE LINE` on stderr. The one
  exit-code policy of every entry point (docs/failures.md).

  given: error kinds that are usage errors here (exit_code). Ctrl-C (KeyboardInterrupt) prints `PROG: interrupted;
  rerun the same command to resume`, exit 130 (SIGTERM: `PROG: terminated (SIGTERM); ...`, exit 143): saves are
  atomic and the workdir lock goes with the process, so the rerun resumes exactly (resumable=False, a tool that
  writes nothing: `PROG: interrupted`). Exit codes other than 0 and 2 end the process at once (exit_now): nothing
  is left to write by then.
  """
  previous = _on_sigterm()
  rerun = "; rerun the same command to resume" if resumable else ""
  try:
    code = body()
  except KeyboardInterrupt as error:
    if isinstance(error, Terminated):
      print(f"{prog}: terminated (SIGTERM){rerun}", file=sys.stderr)
      exit_now(TERMINATED)
    print(f"{prog}: interrupted{rerun}", file=sys.stderr)
    exit_now(INTERRUPTED)
  except Exception as error:  # noqa: BLE001  (matched against the known kinds below, else re-raised)
    code = exit_code(error, given)
    if code is None:
      raise
    say_error(prog, describe(error))
    if code != USAGE:
      exit_now(code)
    return code
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  return code if type(code) is int else OK   # e.g. train_and_evaluate's report: done
