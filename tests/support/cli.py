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


def kdjax_main_in_process(*args, cwd, monkeypatch, capsys) -> subprocess.CompletedProcess:
  """kdjax_main's result for a command line that stops at parsing (a usage mistake: one line, exit 2) or shows the
  config (--show_config), run in this process: kdjax.cli.main's parse_flags and main, as app.run calls them, in
  `cwd`, with sys.argv the command line (ml_collections reads the --config.FIELD overrides from there). For tests
  whose point is what the command says, not the fresh process around it (each entry point keeps a real one:
  test_main.py, test_lookup.py); a run's command line is refused here, since it would train. Every flag is reset
  afterwards and the override flags ml_collections defined for this command line are removed, so no value of
  one call is left for the next."""
  from absl import flags
  from kdjax.cli import main as main_cli
  argv = ["kdjax", *args]
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(sys, "argv", argv)
  capsys.readouterr()   # what the test printed before is not the command's
  try:
    rest = main_cli.parse_flags(argv)
    assert flags.FLAGS.show_config, f"{argv}: parsed, and would start a run: use kdjax_main"
    main_cli.main(rest)
    code = 0
  except SystemExit as stop:
    code = stop.code
  finally:
    flags.FLAGS.unparse_flags()
    for name in [name for name in flags.FLAGS if name.startswith("config.")]:
      delattr(flags.FLAGS, name)
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(argv, code, out, err)
