"""The Python API (kdjax/__init__.py): `kdjax.run`, `kdjax.configs`, the errors; the README's snippet; no JAX loaded
on import."""

import json
import os
import re
import subprocess
import sys

import pytest

import kdjax
from kdjax.config import lookup as configs

from tests.conftest import tiny_config
from tests.support import ROOT


def test_run_with_a_plain_dict_is_one_line_config_error(tmp_path):
  import kdjax
  with pytest.raises(kdjax.ConfigError) as error:
    kdjax.run({"epochs": 1}, tmp_path / "w")
  assert "a dict is not a kdjax config" in str(error.value) and "kdjax.configs.get(" in str(error.value)
  assert not (tmp_path / "w").exists()


def test_a_missing_manual_dir_from_the_api_raises_data_error_and_leaves_no_lock(tmp_path):
  import kdjax
  config = kdjax.configs.get("default", **{"data.name": "image_folder",
                                           "data.manual_dir": str(tmp_path / "no_such_folder")})
  with pytest.raises(kdjax.DataError):
    kdjax.run(config, tmp_path / "w")
  assert list((tmp_path / "w").iterdir()) == []


def test_the_run_docstring_names_only_errors_kdjax_exports():
  import re
  import kdjax
  named = set(re.findall(r"\b([A-Z][A-Za-z]*Error)\b", kdjax.run.__doc__))
  assert named and all(hasattr(kdjax, name) and name in kdjax.__all__ for name in named)
  from kdjax import errors
  assert kdjax.CheckpointError is errors.CheckpointError and kdjax.WriteError is errors.WriteError


def test_import_kdjax_loads_no_jax(tmp_path):
  code = ("import sys, kdjax; kdjax.configs.get('ema'); kdjax.ConfigError; "
          "print(sorted(m for m in ('jax', 'tensorflow_datasets', 'tensorboardX') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"


def readme_block(marker: str) -> str:
  text = (ROOT / "README.md").read_text()
  match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.DOTALL)
  assert match, f"README.md has no python block after <!-- {marker} -->"
  return match[1]


def test_readme_api_snippet_runs_and_prints_nothing_else(tmp_path, monkeypatch, capfd):
  """The README's snippet, verbatim, with kdjax.configs.get shrunk to the tiny test data and two phases."""
  real_get = configs.get

  def tiny_get(name, **overrides):
    config = real_get(name, **overrides)
    for field, value in {"data.image_size": 16, "data.max_train_examples": 96, "data.max_val_examples": 48,
                         "batch_size": 32, "epochs": 1, "phases": ("teacher", "student_kd_ema")}.items():
      configs.override(config, field, value)
    return config

  monkeypatch.setattr(configs, "get", tiny_get)
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(readme_block("test:api"), "README.md (test:api)", "exec"), namespace)
  out, err = capfd.readouterr()
  report = namespace["report"]
  assert json.loads(json.dumps(report)) == json.loads((tmp_path / "runs/notebook/report.json").read_text())
  assert out.splitlines() == [f"{name:28} {model['val_top1']:6.2f} %" for name, model in report["models"].items()]
  assert list(report["models"]) == ["teacher", "student_kd_ema", "teacher_ema", "student_kd_ema (EMA weights)"]
  assert "\r" not in err and "epoch" not in err  # no bar, no lines: the run itself said nothing


def test_run_verbose_prints_the_lines_and_raises_one_line_errors(tmp_path, capfd):
  config = tiny_config(phases=("teacher",), epochs=1)
  config.log_every_epoch = True
  kdjax.run(config, tmp_path / "w", verbose=True)
  out, _ = capfd.readouterr()
  assert "[teacher] epoch 1/1  train_loss" in out and "| teacher |" in out
  with pytest.raises(kdjax.ConfigError, match=r"^kd\.temperature must be > 0"):
    kdjax.run(tiny_config(**{"kd.temperature": -1.0}), tmp_path / "bad")
  assert not (tmp_path / "bad").exists()
  missing = tmp_path / "no_images"
  with pytest.raises(kdjax.DataError, match=rf"^data\.manual_dir: {re.escape(str(missing))} does not exist$"):
    kdjax.run(tiny_config(**{"data.name": "image_folder", "data.manual_dir": str(missing)}), tmp_path / "w2")
