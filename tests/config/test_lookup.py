"""The configs by name or path (kdjax/config/lookup.py): resolution from any folder, one-line errors for a
broken config file or a field that does not exist (with a pointer to the field that does it), describe."""

import pathlib
import re

import pytest

import kdjax
from kdjax.config import lookup as configs
from kdjax.errors import ConfigError

from tests.support import ROOT
from tests.support.cli import kdjax_main
from tests.support.cli import one_error_line


def test_configs_get_overrides_and_one_line_errors():
  config = configs.get("ema", epochs=3, kd={"temperature": 2.0}, **{"data.image_size": 32})
  assert (config.epochs, config.kd.temperature, config.data.image_size) == (3, 2.0, 32)
  with pytest.raises(kdjax.ConfigError, match=r"^config\.kd\.temprature: no such config field; did you mean "
                                              r"kd\.temperature\?"):
    configs.get("ema", kd={"temprature": 2.0})
  with pytest.raises(kdjax.ConfigError, match=r"^config\.epochs must be of type int, got 'two'$"):
    configs.get("ema", epochs="two")
  with pytest.raises(AttributeError):  # locked: a typo cannot add a field
    config.kd.temprature = 3.0


def _shows_ema_with_three_epochs(result, folder):
  assert result.returncode == 0, result.stderr
  assert "phases = ('teacher', 'student_ce', 'student_kd', 'student_kd_ema')" in result.stdout
  assert re.search(r"^epochs = 3 ", result.stdout, re.MULTILINE)
  assert "kd.temperature = 4.0" in result.stdout and "# T in KL" in result.stdout
  assert list(folder.iterdir()) == []  # --show_config writes nothing


@pytest.mark.parametrize("value", ["ema.py", "ema", "configs/ema.py", str(ROOT / "configs" / "ema.py")])
def test_config_by_name_or_path_from_another_folder(tmp_path, kdjax_in_process, value):
  _shows_ema_with_three_epochs(kdjax_in_process("--config", value, "--show_config", "--config.epochs=3",
                                                cwd=tmp_path), tmp_path)


def test_config_by_name_from_another_folder_in_a_fresh_process(tmp_path):
  """The same as the command a user types: kdjax importable (as an install makes it), run in a folder holding
  nothing of the checkout."""
  _shows_ema_with_three_epochs(kdjax_main("--config", "ema.py", "--show_config", "--config.epochs=3", cwd=tmp_path),
                               tmp_path)


def test_a_file_in_the_working_folder_wins_and_may_take_an_argument(tmp_path, kdjax_in_process):
  (tmp_path / "ema.py").write_text(
      "from kdjax import config as config_lib\n"
      "def get_config(arg='10'):\n"
      "  config = config_lib.default_config()\n"
      "  config.epochs = int(arg)\n"
      "  return config\n")
  result = kdjax_in_process("--config", "ema.py:7", "--show_config", cwd=tmp_path)
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
  assert set(configs.available()) == {"default", "ema", "ema_sweep", "kd", "mean_teacher"}
  assert all(purpose for purpose in configs.available().values())


def test_top_level_configs_are_the_shipped_files():
  for name in configs.available():
    assert (ROOT / "configs" / f"{name}.py").resolve() == pathlib.Path(configs.__file__).parent / "shipped" / f"{name}.py"


def test_unknown_config_lists_the_shipped_ones(tmp_path, kdjax_in_process):
  result = kdjax_in_process("--config", "emma.py", "--workdir", "w", cwd=tmp_path)
  assert result.returncode == 2
  assert one_error_line(result) == ("kdjax: error: config emma.py: no such file, and not a shipped config "
                                    "(default.py, ema.py, ema_sweep.py, kd.py, mean_teacher.py); did you mean ema.py?")


def test_a_config_argument_the_config_does_not_take_is_refused(tmp_path, kdjax_in_process):
  result = kdjax_in_process("--config", "ema.py:quick", "--workdir", "w", cwd=tmp_path)
  assert result.returncode == 2
  assert "get_config() of ema.py takes no argument" in one_error_line(result)


def test_misspelled_override_names_the_nearest_field(tmp_path, kdjax_in_process):
  result = kdjax_in_process("--config", "ema.py", "--workdir", "w", "--config.kd.temprature=2", cwd=tmp_path)
  assert result.returncode == 2
  assert one_error_line(result) == ("kdjax: error: --config.kd.temprature: no such config field; did you mean "
                                    "kd.temperature? (--show_config lists them all)")
  assert not (tmp_path / "w").exists()


def test_describe_lists_every_field():
  config = configs.get("kd", epochs=4)
  text = configs.describe(config)
  for field in ("seed", "epochs", "kd.temperature", "optimizer.name", "log_every_steps", "teacher.checkpoint"):
    assert re.search(rf"^{re.escape(field)} = ", text, re.MULTILINE), field
  assert re.search(r"^epochs = 4 ", text, re.MULTILINE)


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


def _broken_config_is_one_line(result, folder, kind):
  assert result.returncode == 2, result.stderr
  assert one_error_line(result) == f"kdjax: error: config {folder / 'mine.py'}{BROKEN_CONFIG_FILES[kind][1]}"
  assert not (folder / "w").exists()


@pytest.mark.parametrize("kind", list(BROKEN_CONFIG_FILES))
@pytest.mark.parametrize("mode", [["--workdir", "w"], ["--show_config"]])
def test_a_broken_config_file_is_one_line_with_its_file_and_line(tmp_path, kdjax_in_process, kind, mode):
  (tmp_path / "mine.py").write_text(BROKEN_CONFIG_FILES[kind][0])
  _broken_config_is_one_line(kdjax_in_process("--config", "mine.py", *mode, cwd=tmp_path), tmp_path, kind)


def test_a_broken_config_file_is_one_line_in_a_fresh_process(tmp_path):
  """The whole command's stderr in a fresh process: the one line, no traceback of the failed import."""
  (tmp_path / "mine.py").write_text(BROKEN_CONFIG_FILES["import fails"][0])
  _broken_config_is_one_line(kdjax_main("--config", "mine.py", "--workdir", "w", cwd=tmp_path), tmp_path,
                             "import fails")


def test_a_broken_config_file_from_python_is_a_config_error(tmp_path):
  (tmp_path / "mine.py").write_text(BROKEN_CONFIG_FILES["raises"][0])
  with pytest.raises(ConfigError, match=rf"^config {re.escape(str(tmp_path / 'mine.py'))}:5: ValueError: "):
    configs.get(str(tmp_path / "mine.py"), epochs=2)


def test_a_kd_concept_that_is_no_field_points_at_the_field_that_does_it(tmp_path, kdjax_in_process):
  result = kdjax_in_process("--config", "ema.py", "--workdir", "w", "--config.kd.alpha=0.5", cwd=tmp_path)
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
