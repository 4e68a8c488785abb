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
