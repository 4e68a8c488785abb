"""`python -m kdjax.main` run as a user would, from any folder, and its one error line."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT


TINY_ARGS = ["--config.data.image_size=16", "--config.data.max_train_examples=96",
             "--config.data.max_val_examples=48", "--config.batch_size=32", "--config.epochs=1"]


def kdjax_main(*args, cwd, stderr=subprocess.PIPE, timeout=300):
  """`python -m kdjax.main ARGS` run in `cwd` (kdjax importable from this checkout, as an install would be)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "kdjax.main", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                        stderr=stderr, text=True, timeout=timeout)


def one_error_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("kdjax: error: ")
  return lines[0]


def assert_one_line_exit_2(capsys, main, argv, prefix, words):
  """`main(argv)` stops with exit 2 and one stderr line, `PREFIX: error: ...` naming `words` (a usage mistake)."""
  with pytest.raises(SystemExit) as stop:
    main(argv)
  assert stop.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: ") and words in lines[0], lines
