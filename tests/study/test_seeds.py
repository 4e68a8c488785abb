"""Several seeds in one run: each seed's numbers equal a one-seed run with that seed; the summary is right."""

import json

import numpy as np
import pytest

from kdjax import data as data_lib
from kdjax.report import build as report_lib
from kdjax.report import significance as statistics
from kdjax.study import experiment
from tests.conftest import tiny_config

PHASES = ("teacher", "student_ce", "student_kd")
NUMBERS = ("val_top1", "val_top5", "val_loss", "val_correct", "agreement_with_teacher", "kl_to_teacher")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("seeds")
  loads = []
  with pytest.MonkeyPatch.context() as patch:   # counts the data loads of the several-seed run
    patch.setattr(data_lib, "load", lambda data_config, load=data_lib.load: loads.append(1) or load(data_config))
    several = experiment.train_and_evaluate(tiny_config(phases=PHASES, seed=3, num_seeds=2), workdir / "both")
  several["data_loads"] = len(loads)
  singles = {seed: experiment.train_and_evaluate(tiny_config(phases=PHASES, seed=seed), workdir / f"only_{seed}")
             for seed in (3, 4)}
  return workdir, several, singles


def test_the_seeds_of_one_run_share_one_load_of_the_data(runs):
  # Each seed loading its own copy put the full Tiny ImageNet's second seed at 5.6 GB (docs/tiny-imagenet-full.md).
  assert runs[1]["data_loads"] == 1


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


def test_each_model_records_its_per_example_correctness(runs):
  _, _, singles = runs
  for report in singles.values():
    vectors = report_lib.correct_vectors(report)
    assert set(vectors) == set(report["models"])
    for name, entry in report["models"].items():
      assert vectors[name].shape == (report["dataset"]["val_examples"],)
      assert int(vectors[name].sum()) == entry["val_correct"]


def test_comparisons_carry_the_per_example_test_and_holm(runs):
  workdir, several, singles = runs
  saved = json.loads((workdir / "both" / "report.json").read_text())
  assert saved["comparison_family"]["method"].startswith("Holm")
  assert saved["comparison_family"]["size"] == len(saved["comparisons"]) == 2
  for comparison in several["comparisons"]:
    a, b = comparison["a"], comparison["b"]
    per_seed = comparison["per_example"]["per_seed"]
    assert [t["seed"] for t in per_seed] == [3, 4]
    for test in per_seed:   # the bits give each seed's gap exactly
      models = singles[test["seed"]]["models"]
      assert test["difference"] == pytest.approx(models[a]["val_top1"] - models[b]["val_top1"])
    assert comparison["holm_p"] >= comparison["test_p"]
    assert comparison["distinguishable_from_zero"] == (comparison["holm_p"] <= 0.05)
  text = (workdir / "both" / "report.md").read_text()
  assert "Holm over 2 p = " in text and "What these cover" in text
  assert text.index("Mean top-1 over 2 seeds: ") < text.index("Paired differences")


def test_a_one_seed_report_tests_against_the_validation_sets_noise(runs):
  _, _, singles = runs
  comparison = next(c for c in singles[3]["comparisons"] if (c["a"], c["b"]) == ("student_kd", "teacher"))
  assert comparison["test"] == statistics.EXACT and comparison["ci95"] is None
  pooled = comparison["per_example"]["pooled"]
  assert comparison["test_p"] == pooled["p_value"] and pooled["difference"] == pytest.approx(comparison["mean"])
  sentence = report_lib.comparison_sentence(comparison, singles[3]["comparison_family"])
  assert f"{pooled['a_only']} right only by student_kd, {pooled['b_only']} only by teacher" in sentence
  assert "validation set's noise" in sentence


def test_the_same_difference_on_every_seed_is_said_so():
  a, b = np.array([[True, True, False, True]] * 3), np.array([[True, False, False, True]] * 3)
  comparison = statistics.compare("student_kd", "teacher", [75.0] * 3, [50.0] * 3, a, b)
  statistics.family([comparison])
  sentence = report_lib.comparison_sentence(comparison)
  assert "the same on every seed (3 seeds)" in sentence and "CI" not in sentence.split(";")[0]
  assert "pooled over seeds: 3 right only by student_kd, 0 only by teacher, p = 0.25" in sentence
  assert sentence.endswith("within the validation set's noise")
