"""The built wheel, installed into a fresh virtual environment in a temporary folder, runs the study by config
name from a folder that is not the checkout (the configs ship inside the package).

The new environment gets kdjax from the wheel alone (`pip install --no-deps`); its dependencies come from the
environment running the tests (a .pth file naming its site-packages), so nothing is downloaded but, when this
environment lacks setuptools, the build backend.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(command, cwd, env=None, timeout=300):
  result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
  return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(python of a fresh venv holding the built wheel, a working folder outside the checkout)."""
  base = tmp_path_factory.mktemp("wheel")
  source = base / "source"  # a copy, so the build leaves nothing in the checkout
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(ROOT / name, source / name)
  for package in ("kdjax", "parity"):
    shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
  isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
  _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--wheel-dir", base / "dist", source],
       cwd=base)
  (wheel,) = (base / "dist").glob("kdjax-*.whl")

  environment = base / "venv"
  venv.create(environment, with_pip=False)
  python = environment / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip()
  dependencies = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
  pathlib.Path(site, "_kdjax_test_dependencies.pth").write_text("\n".join(dependencies) + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=base)

  elsewhere = base / "experiments"
  elsewhere.mkdir()
  return python, elsewhere


def _clean_env() -> dict:
  env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONNOUSERSITE="1")


@pytest.mark.slow  # 13 s here; where setuptools is missing pip also fetches the build backend
def test_wheel_runs_a_config_by_name_from_any_folder(installed):
  python, elsewhere = installed
  env = _clean_env()
  code = "import kdjax; print(kdjax.__file__); print(sorted(kdjax.configs.available()))"
  where = _run([python, "-c", code], cwd=elsewhere, env=env).stdout.splitlines()
  assert pathlib.Path(where[0]).is_relative_to(python.parent.parent), where  # the wheel's copy, not the checkout
  assert where[1] == "['default', 'ema', 'ema_sweep', 'kd', 'mean_teacher']"

  help_text = _run([python, "-m", "kdjax.main", "--help"], cwd=elsewhere, env=env).stdout
  assert "ema.py" in help_text and "--show_config" in help_text
  shown = _run([python, "-m", "kdjax.main", "--config", "ema.py", "--show_config"], cwd=elsewhere, env=env).stdout
  assert "phases = ('teacher', 'student_ce', 'student_kd', 'student_kd_ema')" in shown

  tiny = ["--config.data.image_size=16", "--config.data.max_train_examples=64", "--config.data.max_val_examples=32",
          "--config.epochs=1", "--config.phases=('teacher',)"]
  _run([python, "-m", "kdjax.main", "--config", "configs/ema.py", "--workdir", "runs/ema", *tiny],
       cwd=elsewhere, env=env)
  report = json.loads((elsewhere / "runs/ema/report.json").read_text())
  assert list(report["models"]) == ["teacher"]
  assert (elsewhere / "runs/ema/tensorboard/teacher").is_dir()
