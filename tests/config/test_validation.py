import json
import os
import pathlib

import pytest

from kdjax.config import validation as config_validation
from kdjax import errors
from kdjax.config import defaults as config_lib
from kdjax.errors import ConfigError
from kdjax.study import experiment

from tests.conftest import tiny_config
from tests.support import ckpt as support

ROOT = pathlib.Path(__file__).resolve().parents[2]

BAD_VALUES = [
    ("kd.temperature", 0.0), ("kd.temperature", -1.0), ("ema.decay", 1.5), ("ema.decay", -0.1),
    ("ema.student_decay", 2.0), ("epochs", 0), ("batch_size", 0), ("data.name", "imagenet21k"),
    ("phases", ("teacher", "student_distill")), ("phases", ("student_kd",)), ("model.activation", "gelu"),
    ("model.init", "xavier"), ("optimizer.name", "lamb"), ("optimizer.learning_rate", 0.0),
    ("optimizer.momentum", 1.0), ("data.normalization", "zca"), ("kd.kd_weight", -1.0),
    ("data.image_size", 8), ("checkpoint.keep", 0),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_values_name_their_field(field, value):
  with pytest.raises(errors.ConfigError) as error:
    config_validation.validate(tiny_config(**{field: value}))
  message = str(error.value)
  assert message.startswith(field) and "\n" not in message


def test_defaults_are_valid_and_are_the_seeds():
  config = config_lib.default_config()
  config_validation.validate(config)
  assert config.epochs == 10 and config.model.activation == "none" and config.model.init == "pytorch"
  assert config.kd.kd_weight == 1.0 and config.kd.ce_weight == 0.0


def test_cli_bad_value_is_one_line_naming_the_field(tmp_path, kdjax_in_process):
  result = kdjax_in_process("--config", "configs/ema.py", "--workdir", str(tmp_path / "w"),
                            "--config.kd.temperature=-2", cwd=ROOT)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines == ["kdjax: error: kd.temperature must be > 0, got -2.0"]
  assert not (tmp_path / "w").exists()  # nothing written for a config that cannot run


def test_cli_unwritable_workdir(tmp_path, kdjax_in_process):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  result = kdjax_in_process("--config", "configs/kd.py", "--workdir", str(blocker / "run"), cwd=ROOT)
  assert result.returncode == 2
  assert result.stderr.strip().startswith(f"kdjax: error: workdir: cannot write to {blocker / 'run'}")
  assert len(result.stderr.strip().splitlines()) == 1


def test_cli_overrides_reach_the_run(tmp_path, kdjax_in_process):
  # In process: the command's parse_flags and its run; a fresh process runs one from another folder
  # (tests/cli/test_main.py::test_a_run_from_another_folder_logs_without_carriage_returns).
  workdir = tmp_path / "w"
  result = kdjax_in_process("--config", "configs/ema.py", "--workdir", str(workdir), "--config.epochs=1",
                            "--config.phases=('teacher',)", "--config.kd.temperature=2", "--config.data.image_size=16",
                            "--config.data.max_train_examples=64", "--config.data.max_val_examples=32",
                            "--config.progress=False", cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  config = json.loads((workdir / "config.json").read_text())
  assert config["epochs"] == 1 and config["kd"]["temperature"] == 2.0 and config["phases"] == ["teacher"]
  report = json.loads((workdir / "report.json").read_text())
  assert list(report["models"]) == ["teacher"]
  assert "[teacher] epoch 1/1" in result.stdout


def test_a_field_added_since_a_run_started_compares_at_its_default():
  current = json.loads(config_lib.default_config().to_json_best_effort())
  older = json.loads(config_lib.default_config().to_json_best_effort())
  del older["num_seeds"]
  assert config_lib.differences(older, current) == []
  current["num_seeds"] = 3
  assert config_lib.differences(older, current) == ["num_seeds (1 -> 3)"]


# --- size fields against the memory they imply (issue 36) --------------------------------------------------------

GB = 1000**3


@pytest.mark.parametrize("field,value", [("data.image_size", 100_000), ("data.image_size", 1024),
                                         ("batch_size", 10**6), ("eval_batch_size", 10**7)])
def test_a_size_that_cannot_fit_in_memory_names_its_field(field, value, monkeypatch):
  monkeypatch.setattr(config_validation, "machine_memory", lambda: (24 * GB, "physical memory"))
  config = config_lib.default_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(errors.ConfigError) as error:
    config_validation.validate(config)
  message = str(error.value)
  assert message.startswith(f"{field}={value} needs an estimated ") and "\n" not in message
  assert "more than this machine's 24.0 GB (physical memory)" in message and message.endswith(f"lower {field}")


def test_image_folder_examples_bound_is_named_when_the_images_cannot_fit(monkeypatch):
  monkeypatch.setattr(config_validation, "machine_memory", lambda: (24 * GB, "physical memory"))
  config = tiny_config(**{"data.name": "image_folder", "data.image_size": 64, "data.max_train_examples": 10**7})
  with pytest.raises(errors.ConfigError, match=r"^data\.max_train_examples=10000000 needs an estimated 12\d\.\d GB"):
    config_validation.validate(config)


def test_the_real_studies_fit_a_24_gb_machine(monkeypatch):
  """The full Tiny ImageNet study (100,000 + 10,000 images of 64x64x3, batch 64, eval batch 100; its images held
  once, 1.38 GB; 1.90 GB peak RSS measured over its teacher's first epochs) and the digits study are not refused on
  a 24 GB machine; a 1.5 GB one refuses Tiny ImageNet, naming its images."""
  monkeypatch.setattr(config_validation, "machine_memory", lambda: (24 * GB, "physical memory"))
  config = config_lib.default_config()
  config_validation.validate(config)
  config.data.name = "tiny_imagenet"
  config_validation.validate(config)
  need, parts = config_validation.memory_estimate(config)
  assert 1.5 * GB < need < 1.9 * GB   # a low estimate, under the measured peak
  assert parts[0][1] == 110_000 * 64 * 64 * 3 * config_validation.IMAGE_COPIES
  monkeypatch.setattr(config_validation, "machine_memory", lambda: (1.5 * GB, "the limit in /sys/fs/cgroup/memory.max"))
  with pytest.raises(errors.ConfigError, match=r"^data\.max_train_examples=0 needs an estimated 1\.7 GB .*"
                                               r"\(the limit in /sys/fs/cgroup/memory\.max\)"):
    config_validation.validate(config)
  config.data.max_train_examples = 20_000
  config_validation.validate(config)


def test_machine_memory_is_this_machines():
  limit, source = config_validation.machine_memory()
  assert limit <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") and limit > 0
  assert source == "physical memory" or source.startswith("the limit in /sys/fs/cgroup/")


def test_cli_image_size_beyond_memory_is_one_line_exit_2(tmp_path, kdjax_in_process):
  """The issue's case: data.image_size=100000 was OOM-killed at 18.5 GB with no line; now refused before
  anything runs or is written."""
  result = kdjax_in_process("--config", "configs/ema.py", "--workdir", str(tmp_path / "w"),
                            "--config.data.image_size=100000", cwd=ROOT)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("kdjax: error: data.image_size=100000 needs an estimated ")
  assert "lower data.image_size" in lines[0]
  assert not (tmp_path / "w").exists()


def test_a_seed_out_of_range_is_refused_before_anything_is_created(tmp_path):
  for seed in (-1, 2**31, True):
    with pytest.raises(ConfigError, match=r"^seed must be an integer in \[0, 2\*\*31 - 1\]"):
      config_validation.validate(support.study_config(seed=seed))
  config_validation.validate(support.study_config(seed=2**31 - 1))
  with pytest.raises(ConfigError):
    experiment.train_and_evaluate(support.study_config(seed=-1), tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_temperature_bounds_and_the_divergence_message_names_it():
  for temperature in (1e-30, 5e-3, 2e3, 1e30):
    with pytest.raises(ConfigError, match=r"^kd\.temperature must be in \[0\.01, 1000\]"):
      config_validation.validate(support.study_config(**{"kd.temperature": temperature}))
  for temperature in (0.01, 1000.0):
    config_validation.validate(support.study_config(**{"kd.temperature": temperature}))
  config = support.study_config()
  loss = experiment.train.DivergenceError("non-finite loss")
  assert str(experiment.diverged(config, "student_kd", 2, loss)) == (
      "phase student_kd, epoch 2: non-finite loss (check optimizer.learning_rate=0.001, kd.temperature=4.0)")
  assert str(experiment.diverged(config, "teacher", 1, loss)) == (
      "phase teacher, epoch 1: non-finite loss (check optimizer.learning_rate=0.001)")
