"""The original's EMA without training (issue 30): the trained teacher's EMA-paired tensors at (1 - w)*teacher +
w*student, evaluated on the whole validation split (study/interpolation.py, report/interpolation.py,
python -m kdjax.cli.interpolation), on the suite's one finished tiny EMA run (teacher, student_kd_ema)."""

import json
import shutil
import subprocess

import pytest

from kdjax.cli import interpolation as interpolation_cli
from kdjax.study import interpolation
from kdjax.training import ema

from tests.support import ckpt as support

PROG = "kdjax.cli.interpolation"


def _command(args, tmp_path_factory):
  return support.kdjax(args, None, cache_dir=support.compile_cache(tmp_path_factory), module=PROG)


def _in_process(args, capsys) -> subprocess.CompletedProcess:
  """The command's main in this process (a usage mistake ends it with SystemExit, as it ends the program)."""
  capsys.readouterr()
  try:
    code = interpolation_cli.main(args)
  except SystemExit as stop:
    code = stop.code
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(args, code, out, err)


def _one_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
  assert lines[0].startswith(f"{PROG}: error: ")
  return lines[0]


def test_w0_is_the_teacher_exactly_and_the_dynamic_ema_is_set_beside_it(tmp_path_factory):
  run = support.finished_run(tmp_path_factory)
  report = support.read_report(run)
  result = interpolation.run(run, weights=(1.0, 0.0, 0.5), sources=("initial",))
  assert result["weights"] == [0.0, 0.5, 1.0]   # sorted
  (seed,) = result["seeds"]
  assert seed["top1"]["initial"][0] == report["models"]["teacher"]["val_top1"]   # w = 0: the trained teacher
  assert seed["distance"]["initial"][0] == 0.0 and seed["distance"]["initial"][2] > 0
  assert seed["pairs"] == [[f"conv{i}.{name}"] * 2 for i in range(1, 5) for name in ("kernel", "bias")]
  points = report["models"]["teacher_ema"]["collapse"]
  dynamic = seed["ema"]
  assert dynamic["decay"] == 0.999 and not dynamic["warmup"]
  assert [p["step"] for p in dynamic["points"]] == [p["step"] for p in points]
  for row, point in zip(dynamic["points"], points):
    assert row["w"] == ema.student_share(0.999, point["step"])
    assert (row["probe_top1"], row["top1"]) == (point["probe_teacher_top1"], point["teacher_top1"])


def test_the_command_writes_json_md_png_and_refuses_to_overwrite(tmp_path, tmp_path_factory, capsys):
  run = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  args = [f"--workdir={run}", "--weights=0,0.3,1", "--students=initial"]
  result = _command(args, tmp_path_factory)
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads((run / "interpolation.json").read_text())
  teacher_top1 = support.read_report(run)["models"]["teacher"]["val_top1"]
  assert written["seeds"][0]["top1"]["initial"][0] == teacher_top1
  text = (run / "interpolation.md").read_text()
  assert text in result.stdout and "| w | initial |" in text and "equal to report.json's teacher" in text
  assert "| step k | epoch | w |" in text   # the dynamic EMA's points
  assert (run / "interpolation.png").stat().st_size > 10_000
  before = (run / "interpolation.json").read_bytes()
  again = _in_process(args, capsys)   # the command's main (the run above is its fresh process)
  assert f"{run / 'interpolation.json'}: exists; --overwrite replaces it" in _one_line(again)
  assert (run / "interpolation.json").read_bytes() == before
  assert interpolation.output_paths(run, overwrite=True)[0] == run / "interpolation.json"


def test_a_bad_flag_and_a_missing_workdir_are_one_line_exit_2(tmp_path, tmp_path_factory, capsys):
  run = support.finished_run(tmp_path_factory)
  assert "--weights: '1.5' is outside [0, 1]" in _one_line(
      _in_process([f"--workdir={run}", "--weights=0,1.5"], capsys))
  assert f"{tmp_path / 'nowhere'}: no such workdir" in _one_line(
      _in_process([f"--workdir={tmp_path / 'nowhere'}"], capsys))
  assert "--workdir is required" in _one_line(_in_process([], capsys))
  assert "unexpected argument 'extra'" in _one_line(_in_process([f"--workdir={run}", "extra"], capsys))
  assert not (tmp_path / "nowhere").exists() and not (run / "interpolation.json").exists()


@pytest.mark.parametrize("weights, message", [
    (["0", "1.5"], "--weights: '1.5' is outside [0, 1]"),
    (["0", "x"], "--weights: 'x' is not a number"),
    (["0.1", "0.1"], "--weights: 0.1, 0.1 repeats a value"),
    ([], "--weights: empty"),
])
def test_bad_weights_name_the_flag(weights, message):
  with pytest.raises(interpolation.InputError) as error:
    interpolation.check_weights(weights)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_students_and_missing_or_unfinished_phases_name_them(tmp_path, tmp_path_factory):
  with pytest.raises(interpolation.InputError, match="--students: teacher unknown"):
    interpolation.check_sources(["student_kd", "teacher"])
  run = support.finished_run(tmp_path_factory)   # teacher and student_kd_ema only
  with pytest.raises(interpolation.InputError, match=r"no saved phase student_kd \(saved: teacher, "
                                                     r"student_kd_ema, teacher_ema\).*leave student_kd out of"):
    interpolation.run(run)
  copy = support.copy_of_finished_run(tmp_path, tmp_path_factory)
  shutil.rmtree(copy / "checkpoints" / "teacher" / "3")   # the teacher's last epoch gone: saved epoch 2 of 3
  with pytest.raises(interpolation.InputError, match=r"phase teacher is not finished \(saved epoch 2 of 3\)"):
    interpolation.run(copy, sources=("initial",))


def test_a_several_seed_workdir_gives_each_seed_folder(tmp_path, tmp_path_factory):
  """num_seeds > 1: the runs in seed_<s>/ (kdjax/study/seeds.py's layout), one line naming a missing one."""
  run = support.finished_run(tmp_path_factory)
  top = tmp_path / "several"
  top.mkdir()
  config = json.loads((run / "config.json").read_text())
  (top / "config.json").write_text(json.dumps(dict(config, seed=4, num_seeds=2)))
  shutil.copytree(run, top / "seed_4")
  with pytest.raises(interpolation.InputError, match=r"seed 5 of a 2-seed run: .*seed_5: no such workdir"):
    interpolation.seed_runs(top)
  shutil.copytree(run, top / "seed_5")
  runs = interpolation.seed_runs(top)
  assert [(one.seed, one.run.workdir) for one in runs] == [(4, top / "seed_4"), (5, top / "seed_5")]


def test_the_markdown_gives_each_seed_and_the_mean_over_seeds():
  from kdjax.report import interpolation as report_lib
  seed = lambda number, top1: {
      "seed": number, "top1": {"student_kd": top1}, "distance": {"student_kd": [0.0, 0.1, 0.2]},
      "teacher_top1_report": top1[0], "pairs": [["conv1.kernel", "conv1.kernel"]],
      "data": {"name": "digits", "val_examples": 360, "num_classes": 10},
      "ema": {"decay": 0.999, "warmup": False, "missing": "no kd_ema phase", "points": []}}
  result = {"workdir": "W", "weights": [0.0, 0.5, 1.0], "sources": ["student_kd"], "seconds": 1.0,
            "load_average": {"start": 1.0, "end": 1.0},
            "seeds": [seed(0, [90.0, 60.0, 40.0]), seed(1, [80.0, 50.0, 30.0])]}
  text = report_lib.markdown(result)
  assert "## Seed 0" in text and "## Seed 1" in text and "## Over the 2 seeds (mean ± std)" in text
  assert "| 0.5 | 55.00 ± 7.07 |" in text
  assert "student_kd between w = 0.5 and w = 1" in text   # seed 0: 60 > 45, then 40 <= 45
  assert "No dynamic EMA to set beside it: no kd_ema phase." in text
