"""Every entry point answers --help and --helpfull with no other flag: exit 0, what the tool does, its flags and an
example command, and no developer's path as a default (issue 34)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# module -> (words of what it does, flags its help must name)
ENTRY_POINTS = {
    "kdjax.main": ("knowledge-distillation study", ("--config", "--workdir", "--show_config")),
    "parity.check": ("PyTorch reference", ("--config", "--steps", "--dtype", "--floors", "--student_decay")),
    "parity.export": ("Exports a kdjax run for PyTorch", ("--workdir", "--model", "--out", "--split")),
    "kdjax.data": ("See what a data set holds", ("--config", "--json")),
    "kdjax.cli.inspection": ("Looks inside a run's checkpoints", ("--epoch", "--json", "--evaluate")),
    "kdjax.cli.interpolation": ("Tests the original's EMA without training",
                                ("--workdir", "--weights", "--students", "--overwrite")),
    "kdjax.cli.answer": ("Several finished studies side by side", ("--out",)),
    "kdjax.tools.benchmark": ("How fast kdjax trains", ("--compare-torch", "--study", "--steps", "--config")),
}
DEVELOPER_PATHS = ("shared/data", "/work/", "/home/", "/tmp/")


def run_module(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, timeout=120)


# Entry points that parse into their own FlagValues (kdjax.cli.exits.flag_values), with the module holding their
# main(argv). Their --help (docstring, examples, their own flags: nothing of the process) is read from main in this
# process; --helpfull (absl's listing, headed by the program's path when it runs as __main__) runs as `python -m`
# runs it, each entry point's fresh process.
OWN_FLAGS = {"parity.check": "parity.check", "parity.export": "parity.export", "kdjax.data": "kdjax.cli.data_info",
             "kdjax.cli.inspection": "kdjax.cli.inspection", "kdjax.cli.interpolation": "kdjax.cli.interpolation",
             "kdjax.cli.answer": "kdjax.cli.answer", "kdjax.tools.benchmark": "kdjax.tools.benchmark.__main__"}


def main_in_process(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
  """run_module's result from the entry point's main(argv) in this process, run in `cwd`."""
  import contextlib
  import importlib
  import io
  main = importlib.import_module(OWN_FLAGS[module]).main
  out, err, previous = io.StringIO(), io.StringIO(), os.getcwd()
  os.chdir(cwd)
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        code = main(list(args))
      except SystemExit as stop:
        code = stop.code
  finally:
    os.chdir(previous)
  return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def help_of(tmp_path_factory):
  """(result, the folder it ran in) of `python -m MODULE FLAG`, run once per module and flag (in an empty folder of
  its own) for the tests of this module that read it (--help of an OWN_FLAGS entry point: its main, in process)."""
  results = {}

  def run(module, flag):
    if (module, flag) not in results:
      folder = tmp_path_factory.mktemp("help")
      in_process = flag == "--help" and module in OWN_FLAGS
      results[module, flag] = (main_in_process if in_process else run_module)(module, flag, cwd=folder), folder
    return results[module, flag]
  return run


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
@pytest.mark.parametrize("module", list(ENTRY_POINTS))
def test_help_alone_says_what_the_tool_does_its_flags_and_an_example(help_of, module, flag):
  result, folder = help_of(module, flag)
  assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
  purpose, flag_names = ENTRY_POINTS[module]
  assert purpose in result.stdout
  for name in flag_names:
    assert name in result.stdout, name
  # an example: an indented command line that runs the tool with arguments
  assert re.search(rf"^\s+python -m {re.escape(module)} \S", result.stdout, re.MULTILINE), result.stdout[:3000]
  for path in DEVELOPER_PATHS:
    assert path not in result.stdout, path
  assert "error" not in result.stderr.lower(), result.stderr
  assert list(folder.iterdir()) == []   # help writes nothing


def test_helpfull_lists_more_than_help_and_no_config_dump(help_of):
  """--helpfull adds absl's own flags (the benchmark parses into its own FlagValues: its parser's, --flagfile and
  --undefok); a config flag's default (a whole config as YAML) is never printed."""
  short = help_of("kdjax.tools.benchmark", "--help")[0].stdout
  full = help_of("kdjax.tools.benchmark", "--helpfull")[0].stdout
  assert "--flagfile" in full and "--undefok" in full and "--flagfile" not in short
  for text in (short, full):
    assert "manual_dir:" not in text and "batch_size: 64" not in text


def test_benchmark_study_has_no_developers_data_folder():
  """--study's default config no longer points at a developer's ../shared/data: the data folder is the user's
  --config.data.manual_dir (empty: the data layer downloads, or says in one line that it cannot)."""
  from kdjax.tools.benchmark import study
  assert study.study_config().data.manual_dir == ""


# Entry points whose --help answers before the study's libraries load (kdjax.data, kdjax.cli.inspection and
# kdjax.tools.benchmark load JAX as they are imported: their package or their flags' defaults need it).
LIGHT_HELP = ("kdjax.main", "parity.check", "parity.export", "kdjax.cli.interpolation", "kdjax.cli.answer")


def test_help_of_the_light_entry_points_loads_neither_jax_nor_pytorch(tmp_path):
  """One fresh process per entry point, run as `python -m` runs it: --help answers in a fraction of a second
  (parity.check's took ~4 s of CPU importing PyTorch and JAX for its check before it answered)."""
  code = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n"
          "  runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\nexcept SystemExit as stop:\n"
          "  print(stop.code, sorted(m for m in ('jax', 'torch') if m in sys.modules), file=sys.stderr)\n")
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  for module in LIGHT_HELP:
    result = subprocess.run([sys.executable, "-c", code, module], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.stderr.strip() == "0 []", (module, result.stderr[-2000:])
