"""python -m kdjax.cli.inspection: text and JSON views of a run's checkpoints, --evaluate against the report, and
one-line errors for paths that are not checkpoints."""

import json
import shutil
import subprocess

import numpy as np
import pytest

from kdjax.cli import inspection as inspect_lib
from kdjax.store import checkpoints as ckpt_lib

from tests.support import ckpt as support
from tests.support import cli
from tests.support.runs import _one_line

TEACHER_ORDER = [f"{layer}.{name}" for layer in [f"conv{i}" for i in range(1, 13)] + ["fc"]
                 for name in ("kernel", "bias")]
STUDENT_ORDER = [f"{layer}.{name}" for layer in ["conv1", "conv2", "conv3", "conv4", "fc"]
                 for name in ("kernel", "bias")]


def _run(capsys, *argv) -> tuple[int, str, str]:
  code = inspect_lib.main([str(arg) for arg in argv])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_json_lists_every_model_with_parameters_in_layer_order(tmp_path_factory, capsys):
  run = support.finished_run(tmp_path_factory)
  code, out, _ = _run(capsys, run, "--json")
  assert code == 0
  inspection = json.loads(out)
  report = support.read_report(run)
  assert [model["model"] for model in inspection["models"]] == ["teacher", "student_kd_ema", "teacher_ema"]
  assert inspection["config"]["epochs"] == 3
  by_name = {model["model"]: model for model in inspection["models"]}
  assert [row["name"] for row in by_name["teacher"]["parameters"]] == TEACHER_ORDER   # conv2 before conv10
  assert [row["name"] for row in by_name["student_kd_ema"]["parameters"]] == STUDENT_ORDER
  for name, model in by_name.items():
    assert model["saved_epochs"] == [1, 2, 3] and model["epoch"] == 3 and model["step"] == 12
    assert model["total"]["count"] == report["models"][name]["params"]
    assert model["metrics"] == report["models"][name]["epochs"]
  student = by_name["student_kd_ema"]
  assert set(student["other_state"]) == {"opt_state", "step", "teacher_params", "ema_params"}
  tree, _, _ = ckpt_lib.ModelCheckpoints(run / "checkpoints" / "student_kd_ema", read_only=True).restore()
  kernel = np.asarray(tree["params"]["conv2"]["kernel"], np.float64)
  row = student["parameters"][STUDENT_ORDER.index("conv2.kernel")]
  assert row["shape"] == [3, 3, 12, 12] and row["dtype"] == "float32" and row["count"] == 1296
  assert row["l2_norm"] == pytest.approx(np.linalg.norm(kernel), rel=1e-12)
  assert (row["min"], row["max"]) == (kernel.min(), kernel.max())


def test_text_shows_steps_table_totals_metrics_and_config(tmp_path_factory, capsys):
  run = support.finished_run(tmp_path_factory)
  code, out, _ = _run(capsys, run)
  assert code == 0
  assert "== teacher  (" in out and "== teacher_ema  (" in out
  assert "saved epochs: 1, 2, 3;  showing epoch 3, step 12, phase teacher, finished" in out
  teacher_block = out.split("== student_kd_ema")[0]
  positions = [teacher_block.index(f"  {name} ") for name in TEACHER_ORDER]
  assert positions == sorted(positions)
  assert "  total " in teacher_block and "14,854" in teacher_block
  assert "metrics stored with the checkpoint:" in out
  assert "the run's config (config.json):" in out and "  kd.temperature = 4.0" in out


def test_a_model_folder_with_epoch(tmp_path_factory, capsys):
  run = support.finished_run(tmp_path_factory)
  code, out, _ = _run(capsys, run / "checkpoints" / "teacher", "--epoch", 2, "--json")
  assert code == 0
  (model,) = json.loads(out)["models"]
  assert model["epoch"] == 2 and model["step"] == 8 and model["finished"] is False
  assert [row["epoch"] for row in model["metrics"]] == [1, 2]
  assert model["config"]["epochs"] == 3           # a checkpoint folder carries its run's config
  code, out, _ = _run(capsys, run / "checkpoints" / "teacher")
  assert code == 0 and "config stored with the checkpoint:" in out


@pytest.mark.parametrize("model", ["teacher", "student_kd_ema", "teacher_ema", "student_kd_ema (EMA weights)"])
def test_evaluate_equals_the_report(tmp_path_factory, capsys, model):
  run = support.finished_run(tmp_path_factory)
  code, out, _ = _run(capsys, run, "--evaluate", model, "--json")
  assert code == 0
  result = json.loads(out)
  reported = support.read_report(run)["models"][model]
  assert result["equals_report"] is True
  for key in ("val_top1", "val_top5", "val_loss"):
    assert result[key] == reported[key]
  code, out, _ = _run(capsys, run, "--evaluate", model)
  assert "(equal to the report)" in out


def _bad_path(kind, tmp_path, run):
  if kind == "missing":
    return tmp_path / "nothing_here"
  if kind == "not orbax":
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    return tmp_path / "plain"
  if kind == "junk step":
    (tmp_path / "junk" / "7").mkdir(parents=True)
    return tmp_path / "junk"
  folder = tmp_path / "teacher"
  shutil.copytree(run / "checkpoints" / "teacher", folder)
  if kind == "truncated":
    (folder / "3" / "meta" / "metadata").write_text('{"epo')
  return folder


@pytest.mark.parametrize("kind", ["missing", "not orbax", "junk step", "truncated", "no such epoch"])
def test_bad_paths_are_one_line_naming_the_path_and_touch_nothing(tmp_path, tmp_path_factory, capsys, kind):
  run = support.finished_run(tmp_path_factory)
  path = _bad_path(kind, tmp_path, run)
  before = support.snapshot(tmp_path)
  argv = [path, "--epoch", 9] if kind == "no such epoch" else [path]
  code, out, err = _run(capsys, *argv)
  assert code == 2 and out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kdjax.cli.inspection: error: ") and str(path) in lines[0]
  assert support.snapshot(tmp_path) == before


def test_truncated_arrays_in_the_real_command_give_one_line(tmp_path, tmp_path_factory, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(support.finished_run(tmp_path_factory), workdir)
  step = workdir / "checkpoints" / "teacher" / "3"
  for data in (step / "state").rglob("d/*"):
    data.write_bytes(data.read_bytes()[:10])
  # The run: the other models shown, this one marked, exit 1 (the command, in a fresh process); --evaluate of it:
  # nothing to show, exit 2 (its main, in process).
  command = support.kdjax([str(workdir)], None, module="kdjax.cli.inspection")
  evaluate = subprocess.CompletedProcess(["--evaluate", "teacher"], *_run(capsys, workdir, "--evaluate", "teacher"))
  for result, code in ((command, 1), (evaluate, 2)):
    assert result.returncode == code
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"kdjax.cli.inspection: error: {step}: cannot restore")
    assert ("== student_kd_ema  (" in result.stdout) == (code == 1)


def test_a_truncated_report_is_flagged_by_inspect_and_evaluate(tmp_path, tmp_path_factory, capsys):
  from kdjax.cli import inspection
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  report = workdir / "report.json"
  report.write_text(report.read_text()[:200])
  assert inspection.main([str(workdir)]) == 1
  error = capsys.readouterr().err.strip().splitlines()
  assert len(error) == 1 and error[0].startswith(f"kdjax.cli.inspection: error: {report}: not valid JSON")
  assert inspection.main([str(workdir), "--evaluate", "teacher"]) == 1
  captured = capsys.readouterr()
  assert "top-1" in captured.out and "Traceback" not in captured.err
  assert captured.err.strip().splitlines() == error


def test_inspect_shows_the_good_models_and_marks_the_bad_one(tmp_path, tmp_path_factory, capsys):
  workdir = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  message = support.corrupt_an_array(workdir / "checkpoints" / "teacher" / "3")
  assert inspect_lib.main([str(workdir)]) == 1
  captured = capsys.readouterr()
  assert f"== teacher  ({workdir / 'checkpoints' / 'teacher'})\nBAD CHECKPOINT, not shown: {message}" in captured.out
  assert "== student_kd_ema  (" in captured.out and "== teacher_ema  (" in captured.out
  assert "params, in layer order:" in captured.out.split("== student_kd_ema")[1]
  assert _one_line(captured.err) == f"kdjax.cli.inspection: error: {message}"
  assert inspect_lib.main([str(workdir), "--json"]) == 1
  models = json.loads(capsys.readouterr().out)["models"]
  assert models[0] == {"model": "teacher", "path": str(workdir / "checkpoints" / "teacher"), "error": message}


@pytest.mark.parametrize("argv,words", [([], "expected one PATH"), (["a", "b"], "expected one PATH"),
                                        (["a", "--epoch", "x"], "--epoch=x"), (["a", "--nope"], "nope")])
def test_a_command_line_mistake_is_one_line_exit_2(capsys, argv, words):
  """absl's parser, kdjax's rule (kdjax.cli.exits.parse_flags): one line naming the mistake, exit 2."""
  cli.assert_one_line_exit_2(capsys, inspect_lib.main, argv, "kdjax.cli.inspection", words)
