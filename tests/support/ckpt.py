"""Shared by the checkpoint, resume and inspect tests: tiny runs of the real command in subprocesses."""

import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
# Tiny shapes: 16x16 digits, 200 train / 100 validation, 3 epochs of 4 steps.
TINY_FIELDS = {"data.image_size": 16, "data.max_train_examples": 200, "data.max_val_examples": 100, "epochs": 3,
               "progress": False}
TINY = [f"--config.{field}={value}" for field, value in TINY_FIELDS.items()]   # the same, on a command line
# Both kinds of saved state: the EMA-updated teacher copy and the student-weights average.
EMA_STUDY = ["--config", str(REPO / "configs/ema.py"), "--config.phases=('teacher','student_kd_ema')",
             "--config.ema.student_decay=0.5", *TINY]
TIMING_KEYS = {"train_seconds", "train_images_per_second", "wall_seconds", "checkpoints", "seconds",
               "compile_seconds"}
# What the process decides, not the run: OpenMP's wait policy is GNU OpenMP's default in a test worker that
# imported PyTorch (its libgomp) before the oneDNN extension, so a run in process and one in a fresh process differ.
PROCESS_KEYS = {"wait_policy"}
# report.md's first sentence, and a warning, when a run's teacher is at chance: a tiny run's often is
CHANCE_CAUTION = "The teacher is not distinguishable from chance"

_cache: dict = {}


def env(cache_dir: pathlib.Path | None = None) -> dict:
  environment = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  if cache_dir is not None:  # compile once for all the subprocesses of the session
    environment.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return environment


def kdjax(args, workdir, cache_dir=None, module="kdjax.main", timeout=300,
          variables=None) -> subprocess.CompletedProcess:
  """`python -m MODULE ARGS [--workdir=WORKDIR]` in the checkout; variables: environment variables set for it."""
  command = [sys.executable, "-m", module, *args]
  if workdir is not None:
    command.append(f"--workdir={workdir}")
  return subprocess.run(command, cwd=REPO, env=dict(env(cache_dir), **(variables or {})), capture_output=True,
                        text=True, timeout=timeout)


WAITING = "WAITING BEFORE SAVE"   # what hold_before_save's run prints when it stops to be killed or interrupted


def hold_before_save(condition: str, seconds: int = 600) -> str:
  """Code for `script`: kdjax.main, but when a save meets `condition` (a Python expression of the save's `self`
  (its ModelCheckpoints) and `epoch`) it prints WAITING and sleeps `seconds` instead, to be killed or interrupted."""
  return f"""
import sys, time
from kdjax.store import checkpoints
original = checkpoints.ModelCheckpoints.save
def save(self, epoch, tree, meta):
  if {condition}:
    print({WAITING!r}, flush=True)
    time.sleep({seconds})
  return original(self, epoch, tree, meta)
checkpoints.ModelCheckpoints.save = save
from absl import app
from kdjax.cli import main
sys.argv[0] = "kdjax.main"
app.run(main.main)
"""


def script(code: str, args, cache_dir=None, timeout=300) -> subprocess.Popen:
  """Starts `python -c code args` (stdout piped, stderr merged), SIGINT raising KeyboardInterrupt in it: a test
  suite started as a non-interactive shell's background job (`cmd &`) inherits SIGINT ignored, which Python keeps,
  and the tests' Ctrl-C stands for a user's at a terminal. (Set by the child itself: a preexec_fn would fork a
  multithreaded JAX process.)"""
  code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" + code
  return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env(cache_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_line(process: subprocess.Popen, marker: str, timeout: float = 300) -> list[str]:
  lines, deadline = [], time.monotonic() + timeout
  for line in process.stdout:
    lines.append(line)
    if marker in line:
      return lines
    if time.monotonic() > deadline:
      break
  process.kill()
  raise AssertionError(f"{marker!r} never printed:\n{''.join(lines)}")


def sigkill(process: subprocess.Popen) -> None:
  os.kill(process.pid, signal.SIGKILL)
  process.wait(timeout=30)
  assert process.returncode == -signal.SIGKILL


def finished_run(tmp_path_factory) -> pathlib.Path:
  """One uninterrupted EMA study (teacher, student_kd_ema + its EMA weights), shared by the test modules and,
  under pytest-xdist, by the workers: the first to need it trains it in the run's shared temporary folder while
  holding a lock there; the others wait and read it. Tests read it or copy it (copy_of_finished_run)."""
  if "run" not in _cache:
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base   # xdist: <run>/popen-gwN
    workdir = shared / "finished" / "run"
    with open(shared / "finished.lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not (workdir / "report.json").exists():
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.parent.mkdir(exist_ok=True)
        # At the suite's default XLA setting, whichever module asks first: an `optimized` one would hand its setting
        # to the process (tests/conftest.py), and the in-process runs compared with this one would differ.
        from tests import conftest
        default = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1" if conftest._UNOPTIMIZED_DEFAULT else "0"}
        result = kdjax(EMA_STUDY, workdir, cache_dir=compile_cache(tmp_path_factory), variables=default)
        assert result.returncode == 0, result.stderr[-3000:]
    _cache["run"] = workdir
  return _cache["run"]


def compile_cache(tmp_path_factory) -> pathlib.Path:
  """The test run's JAX compilation cache (tests/conftest.py), else one for this module's subprocesses."""
  if "compile_cache" not in _cache:
    shared = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    _cache["compile_cache"] = pathlib.Path(shared) if shared else tmp_path_factory.mktemp("jax_cache")
  return _cache["compile_cache"]


def without_timing(value):
  """report.json / metrics rows less the wall-clock fields (and where the checkpoints came from) and PROCESS_KEYS."""
  if isinstance(value, dict):
    return {key: without_timing(item) for key, item in value.items() if key not in TIMING_KEYS | PROCESS_KEYS}
  if isinstance(value, list):
    return [without_timing(item) for item in value]
  return value


def read_report(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "report.json").read_text())


def read_metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def snapshot(directory) -> dict:
  """{relative path: (size, mtime_ns)} of every file under `directory`: to show nothing was touched. The
  workdir lock (.lock, which a refused run takes and writes its PID into) is left out."""
  directory = pathlib.Path(directory)
  return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
          for path in sorted(directory.rglob("*")) if path.is_file() and path.name != ".lock"}


def study_config(**overrides):
  """EMA_STUDY's config, in process (config.json of finished_run equals its config_json)."""
  from kdjax.config import defaults as config_lib
  config = config_lib.default_config()
  config.update_from_flattened_dict({"phases": ("teacher", "student_kd_ema"), "ema.student_decay": 0.5,
                                     **TINY_FIELDS, **overrides})
  return config


def run_in_process(config, workdir) -> tuple[str, str]:
  """experiment.train_and_evaluate(config, workdir) in this process, as the command runs it: the run's lines and
  its `kdjax: warning:` lines captured -> (stdout, stderr). For tests whose point is what a run does, not the
  process around it (exit codes, signals and locks keep their subprocesses); the compiled steps stay in memory."""
  import io
  from kdjax import progress
  from kdjax.study import experiment
  out, err = io.StringIO(), io.StringIO()
  with progress.printing(out, err):
    experiment.train_and_evaluate(config, workdir)
  return out.getvalue(), err.getvalue()


def kd_config(**overrides):
  """configs/kd.py with TINY's fields, in process."""
  from configs import kd
  config = kd.get_config()
  config.update_from_flattened_dict({**TINY_FIELDS, **overrides})
  return config


def copy_of_finished_run(tmp_path, tmp_path_factory) -> pathlib.Path:
  workdir = pathlib.Path(tmp_path) / "run"
  shutil.copytree(finished_run(tmp_path_factory), workdir)
  return workdir


def corrupt_an_array(step: pathlib.Path) -> str:
  """Flips one byte (xor 0x40) in the largest data file of a saved step, where it lands in an array's
  uncompressed bytes (which Orbax/TensorStore then read without complaint); returns the verifier's message."""
  from kdjax.store import checkpoints as ckpt_lib
  data = max((step / "state" / "ocdbt.process_0" / "d").iterdir(), key=lambda path: path.stat().st_size)
  original = data.read_bytes()
  for fraction in (0.7, 0.9, 0.1, 0.3, 0.8, 0.6):
    flipped = bytearray(original)
    flipped[int(len(flipped) * fraction)] ^= 0x40
    data.write_bytes(bytes(flipped))
    try:
      ckpt_lib.ModelCheckpoints(step.parent, read_only=True).restore(int(step.name))
    except ckpt_lib.CorruptCheckpointError as error:
      if ": corrupt: array " in str(error):
        return str(error)
  raise AssertionError(f"no flipped byte of {data} landed in an array")
