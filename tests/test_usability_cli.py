"""Usability of the command line: configs by name or path from any folder, one-line mistakes (exit 2), --help,
--show_config, and the README's headline command run from outside the checkout."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from kdjax.config import lookup as configs
from kdjax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
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

# Configs by name or path -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["ema.py", "ema", "configs/ema.py", str(ROOT / "configs" / "ema.py")])
def test_config_by_name_or_path_from_another_folder(tmp_path, value):
  result = kdjax_main("--config", value, "--show_config", "--config.epochs=3", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "phases = ('teacher', 'student_ce', 'student_kd', 'student_kd_ema')" in result.stdout
  assert re.search(r"^epochs = 3 ", result.stdout, re.MULTILINE)
  assert "kd.temperature = 4.0" in result.stdout and "# T in KL" in result.stdout
  assert list(tmp_path.iterdir()) == []  # --show_config writes nothing


def test_a_file_in_the_working_folder_wins_and_may_take_an_argument(tmp_path):
  (tmp_path / "ema.py").write_text(
      "from kdjax import config as config_lib\n"
      "def get_config(arg='10'):\n"
      "  config = config_lib.default_config()\n"
      "  config.epochs = int(arg)\n"
      "  return config\n")
  result = kdjax_main("--config", "ema.py:7", "--show_config", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert re.search(r"^epochs = 7 ", result.stdout, re.MULTILINE)
  assert "phases = ('teacher', 'student_ce', 'student_kd')" in result.stdout  # the file here, not the shipped one


def test_config_resolution_rules(tmp_path, monkeypatch):
  shipped = pathlib.Path(configs.__file__).parent / "shipped"
  monkeypatch.chdir(tmp_path)
  for value in ("kd", "kd.py", "configs/kd.py"):
    assert configs.path(value) == shipped / "kd.py"
  own = tmp_path / "configs" / "kd.py"
  own.parent.mkdir()
  own.write_text("")
  assert configs.path("configs/kd.py") == own.resolve()
  with pytest.raises(ConfigError, match=r"^config other/kd.py: no such file"):
    configs.path("other/kd.py")
  assert set(configs.available()) == {"default", "ema", "ema_sweep", "kd"}
  assert all(purpose for purpose in configs.available().values())


def test_top_level_configs_are_the_shipped_files():
  for name in configs.available():
    assert (ROOT / "configs" / f"{name}.py").resolve() == pathlib.Path(configs.__file__).parent / "shipped" / f"{name}.py"


def test_unknown_config_lists_the_shipped_ones(tmp_path):
  result = kdjax_main("--config", "emma.py", "--workdir", "w", cwd=tmp_path)
  assert result.returncode == 2
  assert one_error_line(result) == ("kdjax: error: config emma.py: no such file, and not a shipped config "
                                    "(default.py, ema.py, ema_sweep.py, kd.py); did you mean ema.py?")


def test_a_config_argument_the_config_does_not_take_is_refused(tmp_path):
  result = kdjax_main("--config", "ema.py:quick", "--workdir", "w", cwd=tmp_path)
  assert result.returncode == 2
  assert "get_config() of ema.py takes no argument" in one_error_line(result)


# One-line mistakes, --help, --show_config -----------------------------------------------------------------------

def test_misspelled_override_names_the_nearest_field(tmp_path):
  result = kdjax_main("--config", "ema.py", "--workdir", "w", "--config.kd.temprature=2", cwd=tmp_path)
  assert result.returncode == 2
  assert one_error_line(result) == ("kdjax: error: --config.kd.temprature: no such config field; did you mean "
                                    "kd.temperature? (--show_config lists them all)")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,message", [
    (["--config", "ema.py"], "--workdir is required"),
    (["--workdir", "w"], "--config is required"),
    (["--config", "ema.py", "--workdir", "w", "--config.epochs=two"], "flag --config.epochs=two"),
    (["--config", "ema.py", "--workdirr", "w"], "Unknown command line flag 'workdirr'"),
])
def test_command_line_mistakes_are_one_line_exit_2(tmp_path, args, message):
  result = kdjax_main(*args, cwd=tmp_path)
  assert result.returncode == 2
  assert message in one_error_line(result)


def test_help_says_what_the_study_is_and_lists_the_configs(tmp_path):
  result = kdjax_main("--help", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert "how does a student perform against its teacher" in result.stdout.lower()
  for name, purpose in configs.available().items():
    assert f"{name}.py" in result.stdout and purpose in result.stdout
  assert "--show_config" in result.stdout and "--config.kd.temperature=2" in result.stdout


def test_describe_lists_every_field():
  config = configs.get("kd", epochs=4)
  text = configs.describe(config)
  for field in ("seed", "epochs", "kd.temperature", "optimizer.name", "log_every_steps", "teacher.checkpoint"):
    assert re.search(rf"^{re.escape(field)} = ", text, re.MULTILINE), field
  assert re.search(r"^epochs = 4 ", text, re.MULTILINE)


def test_a_run_from_another_folder_logs_without_carriage_returns(tmp_path):
  """The README's headline command (tiny), from outside the checkout, stderr to a file: no bars."""
  with (tmp_path / "stderr.log").open("w") as stderr:
    result = kdjax_main("--config", "ema.py", "--workdir", "runs/ema", *TINY_ARGS, "--config.progress=True",
                        "--config.phases=('teacher','student_kd_ema')", cwd=tmp_path, stderr=stderr)
  log = (tmp_path / "stderr.log").read_text()
  assert result.returncode == 0, log[-3000:]
  assert "\r" not in log and "\r" not in result.stdout
  assert "[student_kd_ema] epoch 1/1  train_loss" in result.stdout
  workdir = tmp_path / "runs" / "ema"
  assert "![curves](curves.png)" in (workdir / "report.md").read_text()
  assert sorted(path.name for path in (workdir / "tensorboard").iterdir()) == [
      "config", "student_kd_ema", "student_kd_ema (EMA weights)", "teacher", "teacher_ema"]


# Issue 36 (helper H3): a config file's own errors, and fields named as the KD literature names them ------------

BROKEN_CONFIG_FILES = {
    # file text, the one line expected after "kdjax: error: config FILE"
    "syntax": ("from kdjax import config as config_lib\n\ndef get_config(:\n  return config_lib.default_config()\n",
               ":3: SyntaxError: invalid syntax, column 16"),
    "returns 5": ("def get_config():\n  return 5\n",
                  ": get_config() returned int 5, not an ml_collections.ConfigDict (start from "
                  "kdjax.config.default_config())"),
    "raises": ("from kdjax import config as config_lib\n\ndef get_config():\n  config = config_lib.default_config()\n"
               "  raise ValueError('epochs must come from the cluster')\n  return config\n",
               ":5: ValueError: epochs must come from the cluster (in get_config())"),
    "import fails": ("import no_such_module_for_kdjax\n\ndef get_config():\n  return None\n",
                     ":1: ModuleNotFoundError: No module named 'no_such_module_for_kdjax' (while loading the file)"),
}


@pytest.mark.parametrize("kind", list(BROKEN_CONFIG_FILES))
@pytest.mark.parametrize("mode", [["--workdir", "w"], ["--show_config"]])
def test_a_broken_config_file_is_one_line_with_its_file_and_line(tmp_path, kind, mode):
  text, expected = BROKEN_CONFIG_FILES[kind]
  (tmp_path / "mine.py").write_text(text)
  result = kdjax_main("--config", "mine.py", *mode, cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  assert one_error_line(result) == f"kdjax: error: config {tmp_path / 'mine.py'}{expected}"
  assert not (tmp_path / "w").exists()


def test_a_broken_config_file_from_python_is_a_config_error(tmp_path):
  (tmp_path / "mine.py").write_text(BROKEN_CONFIG_FILES["raises"][0])
  with pytest.raises(ConfigError, match=rf"^config {re.escape(str(tmp_path / 'mine.py'))}:5: ValueError: "):
    configs.get(str(tmp_path / "mine.py"), epochs=2)


def test_a_kd_concept_that_is_no_field_points_at_the_field_that_does_it(tmp_path):
  result = kdjax_main("--config", "ema.py", "--workdir", "w", "--config.kd.alpha=0.5", cwd=tmp_path)
  assert result.returncode == 2
  assert one_error_line(result) == (
      "kdjax: error: --config.kd.alpha: no such config field; use kd.kd_weight and kd.ce_weight (the loss is "
      "kd_weight * KL * T^2 + ce_weight * CE; Hinton's alpha * KD + (1 - alpha) * CE is kd_weight=alpha, "
      "ce_weight=1-alpha) (--show_config lists them all)")


@pytest.mark.parametrize("field,pointer", [
    ("kd.alpha", "use kd.kd_weight and kd.ce_weight"), ("kd.beta", "use kd.kd_weight and kd.ce_weight"),
    ("ema.alpha", "use ema.decay (the original's EMA alpha"), ("ema.momentum", "use ema.decay"),
    ("alpha", "use kd.kd_weight and kd.ce_weight"), ("kd.T", "use kd.temperature"), ("kd.tau", "use kd.temperature"),
    ("temperature", "use kd.temperature"), ("ema.ema_decay", "use ema.decay"),
    ("ema.student_ema", "use ema.student_decay"), ("lr", "use optimizer.learning_rate"),
    ("optimizer.lr", "use optimizer.learning_rate"), ("optimizer.wd", "use optimizer.weight_decay"),
    ("num_epochs", "use epochs"),
    ("kd.temprature", "did you mean kd.temperature?"),   # a misspelling: the nearest field, as before
])
def test_pointers_for_fields_that_do_not_exist(field, pointer):
  with pytest.raises(ConfigError) as error:
    configs.check_field(configs.get("ema"), field, where="--config", listing="…")
  assert str(error.value).startswith(f"--config.{field}: no such config field; {pointer}")


def test_a_field_without_pointer_or_near_name_has_no_dangling_separator():
  with pytest.raises(ConfigError) as error:
    configs.check_field(configs.get("ema"), "nonsense.zzz", where="--config", listing="--show_config lists them all")
  assert str(error.value) == "--config.nonsense.zzz: no such config field (--show_config lists them all)"


def test_output_survives_a_terminal_that_cannot_encode_it(tmp_path):
  """PYTHONIOENCODING=ascii (or a latin-1 terminal): the report's Δ is printed as \\u0394, with no logging-error
  tracebacks, exit 0; the files keep it as UTF-8. A tiny run, so that every line a run prints goes through."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PYTHONIOENCODING="ascii")
  result = subprocess.run([sys.executable, "-m", "kdjax.main", "--config", "kd.py", "--workdir", "runs/Δ",
                           *TINY_ARGS, "--config.progress=False", "--config.phases=('teacher','student_kd')"],
                          cwd=tmp_path, env=env, capture_output=True, timeout=600)
  stdout, stderr = result.stdout.decode("ascii"), result.stderr.decode("ascii")   # nothing but ASCII came out
  assert result.returncode == 0, stderr[-3000:]
  assert "Logging error" not in stderr and "Traceback" not in stderr and "UnicodeEncodeError" not in stderr
  assert "\\u0394" in stdout   # the report's "Δ vs teacher" column, escaped
  report = (tmp_path / "runs" / "Δ" / "report.md").read_bytes().decode("utf-8")
  assert "Δ" in report and "\\u0394" not in report


# Exit codes as docs/failures.md's table says ---------------------------------------------------------------------

RAISE_IN_RUN_MAIN = """
import sys
from kdjax import errors
from kdjax.cli import exits
kind = sys.argv[1]
def body():
  if kind == "OSError":
    raise OSError(28, "No space left on device", "/tmp/full/report.md")
  raise getattr(errors, kind)("the one line")
sys.exit(exits.run_main("kdjax", body))
"""


@pytest.mark.parametrize("kind,code", [
    ("ConfigError", 2), ("DataError", 2), ("TeacherCheckpointError", 2),
    ("DivergenceError", 1), ("CheckpointError", 1), ("CorruptCheckpointError", 1), ("WriteError", 1), ("OSError", 1),
])
def test_exit_codes_of_each_error_kind(kind, code):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", RAISE_IN_RUN_MAIN, kind], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == code, result.stderr
  expected = "/tmp/full/report.md: No space left on device" if kind == "OSError" else "the one line"
  assert result.stderr.splitlines() == [f"kdjax: error: {expected}"]


def test_every_exit_code_row_names_a_test():
  """docs/failures.md's exit-code table: every row names tests, and each named test exists."""
  text = (ROOT / "docs" / "failures.md").read_text()
  rows = [line for line in text.split("## Exit codes", 1)[1].splitlines() if re.match(r"^\| (\d+) \|", line)]
  assert {row.split("|")[1].strip() for row in rows} == {"1", "2", "130", "143"}
  for row in rows:
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row.split("|")[3])
    assert named, row
    for file, test in named:
      assert re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE), f"{file}::{test}"
