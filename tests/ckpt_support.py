"""Shared by the checkpoint, resume and inspect tests: tiny runs of the real command in subprocesses."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# Tiny shapes: 16x16 digits, 200 train / 100 validation, 3 epochs of 4 steps.
TINY = ["--config.data.image_size=16", "--config.data.max_train_examples=200",
        "--config.data.max_val_examples=100", "--config.epochs=3", "--config.progress=False"]
# Both kinds of saved state: the EMA-updated teacher copy and the student-weights average.
EMA_STUDY = ["--config", str(REPO / "configs/ema.py"), "--config.phases=('teacher','student_kd_ema')",
             "--config.ema.student_decay=0.5", *TINY]
TIMING_KEYS = {"train_seconds", "train_images_per_second", "wall_seconds", "checkpoints", "seconds"}

_cache: dict = {}


def env(cache_dir: pathlib.Path | None = None) -> dict:
  environment = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  if cache_dir is not None:  # compile once for all the subprocesses of the session
    environment.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                       JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return environment


def kdjax(args, workdir, cache_dir=None, module="kdjax.main", timeout=300) -> subprocess.CompletedProcess:
  command = [sys.executable, "-m", module, *args]
  if workdir is not None:
    command.append(f"--workdir={workdir}")
  return subprocess.run(command, cwd=REPO, env=env(cache_dir), capture_output=True, text=True,
                        timeout=timeout)


def script(code: str, args, cache_dir=None, timeout=300) -> subprocess.Popen:
  """Starts `python -c code args` (stdout piped, stderr merged)."""
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
  """One uninterrupted EMA study (teacher, student_kd_ema + its EMA weights), shared by the test modules."""
  if "run" not in _cache:
    workdir = tmp_path_factory.mktemp("finished") / "run"
    result = kdjax(EMA_STUDY, workdir, cache_dir=compile_cache(tmp_path_factory))
    assert result.returncode == 0, result.stderr[-3000:]
    _cache["run"] = workdir
  return _cache["run"]


def compile_cache(tmp_path_factory) -> pathlib.Path:
  if "compile_cache" not in _cache:
    _cache["compile_cache"] = tmp_path_factory.mktemp("jax_cache")
  return _cache["compile_cache"]


def without_timing(value):
  """report.json / metrics rows less the wall-clock fields (and where the checkpoints came from)."""
  if isinstance(value, dict):
    return {key: without_timing(item) for key, item in value.items() if key not in TIMING_KEYS}
  if isinstance(value, list):
    return [without_timing(item) for item in value]
  return value


def read_report(workdir) -> dict:
  return json.loads((pathlib.Path(workdir) / "report.json").read_text())


def read_metrics(workdir) -> list[dict]:
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def snapshot(directory) -> dict:
  """{relative path: (size, mtime_ns)} of every file under `directory`: to show nothing was touched."""
  directory = pathlib.Path(directory)
  return {str(path.relative_to(directory)): (path.stat().st_size, path.stat().st_mtime_ns)
          for path in sorted(directory.rglob("*")) if path.is_file()}
