"""parity.export on a real (tiny) kdjax run: state_dicts PyTorch loads strictly, probes, the exact validation
inputs, accuracies equal to report.json, and one-line errors."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from configs import ema as ema_config

from kdjax.study import experiment
from parity import convert
from parity import export
from parity import harness
from parity import reference

from tests.conftest import tiny_config
from tests.support import cli
from tests.support.runs import _one_line

# Not `optimized` (tests/conftest.py): the exported weights are compared with the run's own numbers (its probe, its
# report), which PyTorch recomputes to float32 rounding whatever XLA's optimisation setting; the run shares the
# suite's tiny shapes (tests/conftest.tiny_config), so its programs are mostly compiled already.
pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

MODELS = ("teacher", "student_ce", "student_kd", "student_kd_ema", "teacher_ema")
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  config, tiny = ema_config.get_config(), tiny_config()
  for field in ("batch_size", "eval_batch_size", "progress", "log_every_epoch", "data"):
    config[field] = tiny[field]
  config.epochs = 1
  path = tmp_path_factory.mktemp("run")
  with jax.default_matmul_precision("highest"):
    experiment.train_and_evaluate(config, str(path))
  return path


@pytest.fixture(scope="module")
def validation(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("export") / "val.npz"
  assert export.main(["data", "--workdir", str(workdir), "--split", "validation", "--out", str(out)]) == 0
  return np.load(out)


def test_data_export_is_the_models_inputs(workdir, validation):
  x, y = validation["x"], validation["y"]
  assert x.dtype == np.float32 and x.shape == (128, 16, 16, 3) and y.dtype == np.int64
  config = export.workdir_config(str(workdir))
  from kdjax import data as data_lib
  dataset = data_lib.load(config.data)
  mean, std = data_lib.normalization_constants(dataset, config.data.normalization)
  np.testing.assert_array_equal(x, harness.model_inputs(dataset.val_images, mean, std))
  np.testing.assert_array_equal(y, dataset.val_labels)


@pytest.mark.parametrize("model", MODELS)
def test_weights_load_strictly_match_the_probe_and_the_report(workdir, validation, tmp_path, model):
  out, probe = tmp_path / f"{model}.pt", tmp_path / "probe.npz"
  assert export.main(["weights", "--workdir", str(workdir), "--model", model, "--out", str(out),
                      "--probe-out", str(probe), "--probe-count", "8"]) == 0
  net = reference.NETS[export.net_of(model)](num_classes=10, image_size=16)
  net.load_state_dict(torch.load(out), strict=True)
  net.eval()
  probe_data = np.load(probe)
  assert probe_data["x"].shape == (8, 16, 16, 3) and probe_data["x"].dtype == np.float32
  with torch.no_grad():
    probe_logits = net(convert.images_to_torch(probe_data["x"])).numpy()
    val_logits = net(convert.images_to_torch(validation["x"])).numpy()
  assert np.max(np.abs(probe_logits - probe_data["logits"])) <= 1e-5
  report = json.loads((workdir / "report.json").read_text())["models"][model]
  correct = int((val_logits.argmax(-1) == validation["y"]).sum())
  assert correct == report["val_correct"]
  assert 100.0 * correct / len(validation["y"]) == pytest.approx(report["val_top1"], abs=1e-9)


def _error(argv, capsys) -> str:
  assert export.main(argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("parity.export: error: ")
  return lines[0]


def test_errors_are_one_line(workdir, tmp_path, capsys):
  out = str(tmp_path / "x.pt")
  missing = str(tmp_path / "no_such_run")
  assert missing in _error(["weights", "--workdir", missing, "--model", "teacher", "--out", out], capsys)
  assert "'nobody'" in _error(["weights", "--workdir", str(workdir), "--model", "nobody", "--out", out], capsys)
  kd_run = tmp_path / "kd_run"
  (kd_run / "checkpoints").mkdir(parents=True)
  (kd_run / "config.json").write_text((workdir / "config.json").read_text())
  message = _error(["weights", "--workdir", str(kd_run), "--model", "student_kd_ema", "--out", out], capsys)
  assert "student_kd_ema" in message and str(kd_run / "checkpoints" / "student_kd_ema") in message
  assert not (kd_run / "checkpoints" / "student_kd_ema").exists()  # reading never creates it
  assert "'test'" in _error(["data", "--workdir", str(workdir), "--split", "test", "--out", out], capsys)
  assert "no_dir" in _error(["data", "--workdir", str(workdir), "--out", str(tmp_path / "no_dir" / "v.npz")], capsys)


def test_command_line_entry_point(workdir, tmp_path, capsys):
  out = tmp_path / "student_kd.pt"
  done = subprocess.run([sys.executable, "-m", "parity.export", "weights", "--workdir", str(workdir), "--model",
                         "student_kd", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  reference.StudentNet(10, 16).load_state_dict(torch.load(out), strict=True)
  # A missing workdir: its main in process (the command's own process is the export above).
  code = export.main(["weights", "--workdir", str(tmp_path / "nope"), "--model", "teacher", "--out", str(out)])
  stderr = capsys.readouterr().err
  assert code == 2 and stderr.strip().count("\n") == 0 and "nope" in stderr


def test_export_out_must_be_a_file_path_ending_as_written(workdir, tmp_path, capsys):
  run = workdir
  cases = {("weights", "--model", "teacher", "--out", str(tmp_path)): "it is a directory",
           ("data", "--out", str(tmp_path)): "it is a directory",
           ("data", "--out", str(tmp_path / "val")): f"must end in .npz (numpy would write {tmp_path / 'val'}.npz"}
  for argv, expected in cases.items():
    assert export.main([argv[0], "--workdir", str(run), *argv[1:]]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("parity.export: error: ") and expected in line
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,words", [
    (["data", "--workdir", "W", "--out", "v.npz", "--model", "teacher"], "--model is not a flag of data"),
    (["weights", "--workdir", "W", "--out", "t.pt"], "weights needs --model"),
    (["--workdir", "W"], "expected one command, weights or data, got none"),
    (["train", "--workdir", "W"], "got train"),
])
def test_a_command_line_mistake_is_one_line_exit_2(capsys, argv, words):
  cli.assert_one_line_exit_2(capsys, export.main, argv, "parity.export", words)
