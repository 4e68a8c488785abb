"""Several seeds in one run: each seed's numbers equal a one-seed run with that seed; the summary is right."""

import json

import pytest

from kdjax.study import experiment
from kdjax.report import significance as statistics
from tests.conftest import tiny_config

PHASES = ("teacher", "student_ce", "student_kd")
NUMBERS = ("val_top1", "val_top5", "val_loss", "val_correct", "agreement_with_teacher", "kl_to_teacher")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("seeds")
  several = experiment.train_and_evaluate(tiny_config(phases=PHASES, seed=3, num_seeds=2), workdir / "both")
  singles = {seed: experiment.train_and_evaluate(tiny_config(phases=PHASES, seed=seed), workdir / f"only_{seed}")
             for seed in (3, 4)}
  return workdir, several, singles


def test_each_seed_equals_a_one_seed_run(runs):
  workdir, _, singles = runs
  for seed, single in singles.items():
    seed_report = json.loads((workdir / "both" / f"seed_{seed}" / "report.json").read_text())
    for name, entry in single["models"].items():
      for field in NUMBERS:
        if field in entry:
          assert seed_report["models"][name][field] == entry[field], (seed, name, field)
      assert [row["val_top1"] for row in seed_report["models"][name]["epochs"]] == [
          row["val_top1"] for row in entry["epochs"]]


def test_the_summary_is_the_mean_std_and_paired_difference_of_the_seeds(runs):
  workdir, several, singles = runs
  assert several["seeds"] == [3, 4] and several["num_seeds"] == 2
  assert json.loads((workdir / "both" / "report.json").read_text())["models"].keys() == several["models"].keys()
  for name, entry in several["models"].items():
    values = [singles[seed]["models"][name]["val_top1"] for seed in (3, 4)]
    assert entry["val_top1"] == pytest.approx(sum(values) / 2)
    assert entry["val_top1_std"] == pytest.approx(statistics.std(values))
    assert [row["seed"] for row in entry["per_seed"]] == [3, 4]
    assert [row["val_top1"] for row in entry["per_seed"]] == values
  comparisons = {(c["a"], c["b"]): c for c in several["comparisons"]}
  assert set(comparisons) == {("student_kd", "student_ce"), ("student_kd", "teacher")}
  kd_minus_ce = [singles[s]["models"]["student_kd"]["val_top1"] - singles[s]["models"]["student_ce"]["val_top1"]
                 for s in (3, 4)]
  assert comparisons[("student_kd", "student_ce")]["mean"] == pytest.approx(sum(kd_minus_ce) / 2)
  assert comparisons[("student_kd", "student_ce")]["n"] == 2
  text = (workdir / "both" / "report.md").read_text()
  assert "student_kd − student_ce" in text and "±" in text
  assert (workdir / "both" / "curves.png").stat().st_size > 0


def test_a_one_seed_report_keeps_its_meaning(runs):
  _, _, singles = runs
  entry = singles[3]["models"]["student_kd"]
  assert entry["val_top1_std"] is None and [row["seed"] for row in entry["per_seed"]] == [3]
  assert entry["per_seed"][0]["val_top1"] == entry["val_top1"]
  comparison = next(c for c in singles[3]["comparisons"] if (c["a"], c["b"]) == ("student_kd", "teacher"))
  assert comparison["n"] == 1 and comparison["ci95"] is None
  assert comparison["mean"] == entry["val_top1"] - singles[3]["models"]["teacher"]["val_top1"]
