"""The study's command (kdjax/cli/main.py): --help, --helpfull, --show_config, command-line mistakes as one line
(exit 2), a run from another folder."""

import pytest

from kdjax.config import lookup as configs

from tests.support.cli import TINY_ARGS
from tests.support.cli import kdjax_main
from tests.support.cli import one_error_line


def test_helpfull_and_help(tmp_path):
  from tests.support.cli import kdjax_main
  full = kdjax_main("--helpfull", cwd=tmp_path)
  assert full.returncode == 0 and "is required" not in full.stdout + full.stderr
  assert "--show_config" in full.stdout and "--workdir" in full.stdout
  short = kdjax_main("--help", cwd=tmp_path)
  assert short.returncode == 0
  rows = [line for line in short.stdout.splitlines() if line.startswith("  ema_sweep.py")]
  assert len(rows) == 1 and rows[0].startswith("  ema_sweep.py ")   # not "ema_sweep.pyThe seed's ..."


def test_show_config_refuses_an_invalid_value_in_one_line(tmp_path, kdjax_in_process):
  # In process: --show_config's fresh process is tests/config/test_lookup.py's, from another folder.
  result = kdjax_in_process("--config", "kd.py", "--show_config", "--config.kd.temperature=-1", cwd=tmp_path)
  assert result.returncode == 2 and result.stdout == ""
  [line] = result.stderr.strip().splitlines()
  assert line.startswith("kdjax: error: ") and "kd.temperature" in line


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
