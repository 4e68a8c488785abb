"""python -m kdjax.cli.answer: finished studies' report.json files side by side, one line for what cannot be used."""

import json

import pytest

from kdjax.cli import answer as command
from tests.support.runs import _one_line


def _workdir(path, top1_per_seed: dict, seeds=(0, 1, 2)):
  """A finished several-seed workdir as kdjax writes it, reduced to what the table reads."""
  path.mkdir(parents=True)
  (path / "report.json").write_text(json.dumps({"seeds": list(seeds), "models": {}}))
  for i, seed in enumerate(seeds):
    (path / f"seed_{seed}").mkdir()
    models = {name: {"val_top1": values[i], "epochs": []} for name, values in top1_per_seed.items()}
    (path / f"seed_{seed}" / "report.json").write_text(json.dumps({"models": models}))
  return path


ROWS = {"teacher": [20.6, 21.1, 20.3], "student_ce": [21.4, 21.2, 21.1], "student_kd": [18.9, 19.5, 19.0]}


def test_two_studies_print_and_write_one_table(tmp_path, capsys):
  original = _workdir(tmp_path / "original", ROWS)
  relu = _workdir(tmp_path / "relu", {name: [v - 3 for v in values] for name, values in ROWS.items()}, seeds=(4, 5, 6))
  out = tmp_path / "answer.md"
  assert command.main([f"original={original}", f"relu={relu}", f"--out={out}"]) == 0
  printed = capsys.readouterr().out
  assert printed == out.read_text()
  assert "| model | original (3 seeds) | relu (3 seeds) |" in printed
  assert "| teacher | 20.67 ± 0.40 | 17.67 ± 0.40 |" in printed
  assert "| relu | student_kd − student_ce | -5.50, -4.70, -5.10 |" not in printed   # differences within a study
  assert "| relu | student_kd − student_ce | -2.50, -1.70, -2.10 | -2.10 |" in printed
  assert "Holm over the 4 tested rows below" in printed


@pytest.mark.parametrize("args, words", [
    ([], "no study given: NAME=WORKDIR"),
    (["runs/ema"], "'runs/ema': each study is NAME=WORKDIR"),
    (["a=x", "a=y"], "the name 'a' is given twice"),
])
def test_a_command_line_mistake_is_one_line_exit_2(capsys, args, words):
  with pytest.raises(SystemExit) as stop:
    command.main(args)
  assert stop.value.code == 2
  line = _one_line(capsys.readouterr().err)
  assert line.startswith("kdjax.cli.answer: error: ") and words in line


def test_a_missing_or_unfinished_study_is_one_line_naming_the_path_exit_2(tmp_path, capsys):
  assert command.main([f"a={tmp_path / 'nowhere'}"]) == 2
  assert f"{tmp_path / 'nowhere'}: no such workdir" in _one_line(capsys.readouterr().err)
  unfinished = _workdir(tmp_path / "unfinished", ROWS)
  (unfinished / "seed_1" / "report.json").unlink()
  assert command.main([f"a={unfinished}"]) == 2
  assert f"{unfinished / 'seed_1' / 'report.json'}: no such file" in _one_line(capsys.readouterr().err)
