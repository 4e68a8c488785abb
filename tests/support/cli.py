"""`python -m kdjax.main` run as a user would, from any folder, and its one error line."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT


# One epoch at the shapes of tests/support/ckpt.TINY_FIELDS (its batch sizes too): the programs of these fresh
# processes are those the suite's other tiny runs compiled into the run's compilation cache (tests/conftest.py).
TINY_ARGS = ["--config.data.image_size=16", "--config.data.max_train_examples=200",
             "--config.data.max_val_examples=100", "--config.epochs=1"]


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
  """kdjax_main's result, computed in this process, for a usage mistake (one line, exit 2), --show_config, a run
  whose config or workdir is refused (exit 2, nothing written) or a run.
  kdjax.cli.main's parse_flags as app.run calls it, in `cwd`, with sys.argv the command line (ml_collections reads
  the --config.FIELD overrides from there); then its main for --show_config, or for a run what main runs:
  run_main("kdjax", experiment.train_and_evaluate(config, workdir)) with the run's lines printed to stdout
  (progress.printing), less the process-wide settings main makes first (the heap's tuning, stderr's filters); a
  run that broke ends this call (exit_now raises SystemExit), not the test's process. For tests whose point is
  what the command says or does, not the fresh process around it; each entry point keeps real ones (test_main.py,
  test_lookup.py, store/test_checkpoints.py). Every flag is reset
  afterwards and the override flags ml_collections defined for this command line are removed, so no value of one
  call is left for the next."""
  from absl import flags
  from kdjax.cli import exits
  from kdjax.cli import main as main_cli
  argv = ["kdjax", *args]
  monkeypatch.chdir(cwd)
  monkeypatch.setattr(sys, "argv", argv)
  monkeypatch.setattr(exits, "exit_now", lambda code: sys.exit(code))
  capsys.readouterr()   # what the test printed before is not the command's
  try:
    rest = main_cli.parse_flags(argv)
    if flags.FLAGS.show_config:
      main_cli.main(rest)
      code = 0
    else:
      from kdjax import progress
      from kdjax.study import experiment
      with progress.printing(sys.stdout):
        code = exits.run_main("kdjax", lambda: experiment.train_and_evaluate(flags.FLAGS.config,
                                                                              flags.FLAGS.workdir))
  except SystemExit as stop:
    code = stop.code
  finally:
    flags.FLAGS.unparse_flags()
    for name in [name for name in flags.FLAGS if name.startswith("config.")]:
      delattr(flags.FLAGS, name)
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(argv, code, out, err)
