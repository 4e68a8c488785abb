"""The whole study, end to end, on a tiny digits config (the real code, small)."""

import json
import platform

import jax
import numpy as np
import pytest

from kdjax import phases
from kdjax.store import checkpoints as ckpt_lib
from kdjax.study import experiment
from kdjax.training import train
from kdjax import progress

from tests.conftest import tiny_config
from tests.support import ckpt as support
from tests.support.runs import _teacher_only

FIVE = ["teacher", "student_ce", "student_kd", "student_kd_ema", "teacher_ema"]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ema")
  config = tiny_config(phases=phases.PHASE_NAMES, **{"ema.student_decay": 0.9})
  return workdir, experiment.train_and_evaluate(config, workdir)


def test_report_shape_and_files(ema_run):
  workdir, report = ema_run
  for name in ("config.json", "metrics.jsonl", "report.json", "report.md", "curves.png"):
    assert (workdir / name).stat().st_size > 0, name
  assert json.loads((workdir / "report.json").read_text())["models"].keys() == report["models"].keys()
  assert [name for name in report["models"] if "(EMA weights)" not in name] == FIVE
  assert [name for name in report["models"] if "(EMA weights)" in name] == [
      f"{phase} (EMA weights)" for phase in ("student_ce", "student_kd", "student_kd_ema")]
  assert report["dataset"] == {"name": "digits", "train_examples": 256, "val_examples": 128,
                               "num_classes": 10, "image_shape": [16, 16, 3]}
  assert set(report["environment"]) >= {"jax", "flax", "backend", "devices", "host_malloc", "cpu", "xla", "onednn",
                                        "variables"}
  # what decides the bits is named: the CPU's kernel class, XLA's cap, float64 mode, and report.md says it
  environment = report["environment"]
  assert environment["cpu"]["isa_class"] in ("avx512", "avx2", "avx", "sse", platform.machine())
  assert environment["xla"]["x64"] is False and environment["xla"]["intra_op_threads"] >= 1
  assert f"; CPU {environment['cpu']['model']} ({environment['cpu']['isa_class']};" in (workdir / "report.md").read_text()
  if platform.libc_ver()[0] == "glibc":   # speed.host_malloc="tuned" (the default) took effect, and report.md says so
    assert "no mmap" in report["environment"]["host_malloc"]
    assert f"host memory: {report['environment']['host_malloc']}." in (workdir / "report.md").read_text()
  assert report["config"]["epochs"] == 2
  for name, entry in report["models"].items():
    assert set(entry) >= {"val_top1", "val_top5", "val_loss", "params", "flops_per_image", "train_seconds",
                          "train_images_per_second", "epochs"}, name
    assert 0 <= entry["val_top1"] <= entry["val_top5"] <= 100
    assert [row["epoch"] for row in entry["epochs"]] == [1, 2]
    assert entry["epochs"][-1]["val_top1"] == entry["val_top1"]
    assert entry["val_top1"] == pytest.approx(100 * entry["val_correct"] / 128)
  for name in ("student_ce", "student_kd", "student_kd_ema"):
    assert {"agreement_with_teacher", "kl_to_teacher"} <= set(report["models"][name])
  assert report["models"]["teacher"]["params"] == report["models"]["teacher_ema"]["params"]


def test_metrics_lines(ema_run):
  workdir, _ = ema_run
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(rows) == 2 * 8  # 2 epochs x (4 phases + teacher_ema + 3 students' EMA weights)
  assert set(rows[0]) >= {"phase", "epoch", "train_loss", "val_loss", "val_top1", "val_top5", "step", "seconds"}
  teacher_rows = [row for row in rows if row["model"] == "teacher"]
  assert [row["step"] for row in teacher_rows] == [8, 16]  # 256 / 32 = 8 steps an epoch


def test_checkpoints_per_model(ema_run):
  workdir, _ = ema_run
  for name in FIVE:
    assert (workdir / "checkpoints" / name / "2").is_dir(), name


def test_the_ema_teacher_moved_and_the_kd_teacher_did_not(ema_run):
  workdir, report = ema_run
  models = report["models"]
  assert models["teacher_ema"]["val_loss"] != models["teacher"]["val_loss"]
  def saved(model, field):
    reader = ckpt_lib.ModelCheckpoints(workdir / "checkpoints" / model, read_only=True)
    tree, _, _ = reader.restore()
    reader.close()
    return jax.tree_util.tree_leaves(tree[field])

  trained = saved("teacher", "params")
  # student_kd's state carries the teacher it distilled from: still exactly the trained teacher.
  for kd_teacher, teacher in zip(saved("student_kd", "teacher_params"), trained, strict=True):
    np.testing.assert_array_equal(kd_teacher, teacher)
  # The original's EMA moved the teacher copy of student_kd_ema.
  assert any(not np.array_equal(ema_teacher, teacher)
             for ema_teacher, teacher in zip(saved("teacher_ema", "params"), trained, strict=True))


def test_report_md_answers_from_the_numbers(ema_run):
  workdir, report = ema_run
  text = (workdir / "report.md").read_text()
  for name in FIVE:
    assert f"| {name} |" in text
  assert f"{report['models']['student_kd']['val_top1']:.2f} %" in text
  assert f"{report['models']['teacher_ema']['val_top1']:.2f} %" in text


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
  """ema_run's config less three phases, run again: (its report, the calls of host_memory.release and
  Setup.evaluate in order). Both are recorded on their way to the real ones."""
  calls = []
  with pytest.MonkeyPatch.context() as patch:
    release, evaluate = experiment.host_memory.release, experiment.Setup.evaluate
    patch.setattr(experiment.host_memory, "release", lambda: calls.append("release") or release())
    patch.setattr(experiment.Setup, "evaluate",
                  lambda self, net, params: calls.append("evaluate") or evaluate(self, net, params))
    report = experiment.train_and_evaluate(tiny_config(phases=("teacher", "student_ce"), **{"ema.student_decay": 0.9}),
                                           tmp_path_factory.mktemp("again"))
  return report, calls


def test_same_config_same_numbers(ema_run, second_run):
  _, report = ema_run
  again, _ = second_run
  for name in ("teacher", "student_ce"):
    assert again["models"][name]["epochs"] == report["models"][name]["epochs"]


def test_kd_config_gives_three_rows(tmp_path):
  config = tiny_config(phases=("teacher", "student_ce", "student_kd"), epochs=1)
  report = experiment.train_and_evaluate(config, tmp_path)
  assert list(report["models"]) == FIVE[:3]


def test_divergence_names_phase_epoch_step_and_keeps_what_was_written(tmp_path):
  config = tiny_config(phases=("teacher",), **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e6})
  with pytest.raises(train.DivergenceError, match=r"phase teacher, epoch 1: .* at step \d+"):
    experiment.train_and_evaluate(config, tmp_path)
  assert (tmp_path / "config.json").exists()


def test_a_run_says_when_it_compiles_and_evaluates_and_puts_its_config_in_tensorboard(tmp_path, caplog):
  from kdjax.store import tensorboard
  config = _teacher_only(**{"kd.temperature": 3.0})
  with caplog.at_level("INFO", logger="kdjax"):
    experiment.train_and_evaluate(config, tmp_path)
  lines = [record.getMessage() for record in caplog.records]
  compiling = lines.index("[teacher epoch 1/1] compiling the training step")
  assert lines[compiling + 1].startswith("[teacher epoch 1/1] compiled the training step and ran it once in ")
  assert "[teacher] evaluating teacher on the 128 validation examples" in lines
  assert any(line.startswith("writing report.json, the figures and report.md to ") for line in lines)
  texts = tensorboard.read_texts(tmp_path)
  assert list(texts) == [tensorboard.CONFIG_TAG]
  shown = texts[tensorboard.CONFIG_TAG].splitlines()
  assert "epochs = 1" in shown and "kd.temperature = 3.0" in shown and "phases = ['teacher']" in shown
  assert set(tensorboard.read(tmp_path)) == {"teacher"}   # the scalars' runs: the models only


def test_phases_run_in_dependency_order(tmp_path, monkeypatch, capsys):
  config = support.study_config(phases=("student_kd", "teacher"))
  assert experiment.phases_to_run(config, None) == ("teacher", "student_kd")
  assert experiment.phases_to_run(support.study_config(phases=("student_kd_ema", "student_ce", "teacher")),
                                  None) == ("teacher", "student_ce", "student_kd_ema")
  started = []

  def run_phase(setup, run, phase, *args):   # records the order, stops before any training
    started.append(phase)
    raise KeyboardInterrupt
  monkeypatch.setattr(experiment, "run_phase", run_phase)
  with pytest.raises(KeyboardInterrupt), progress.printing():   # the run's lines, as the command line shows them
    experiment.train_and_evaluate(config, tmp_path / "run")
  assert started == ["teacher"]
  assert "kdjax: note: phases run in dependency order: teacher, student_kd" in capsys.readouterr().out


def test_each_evaluation_starts_on_a_trimmed_heap(second_run):
  """The heap's free pages go back (host_memory.release) before every epoch's evaluation, not only before each
  phase: the evaluation's buffers then never stack on the epoch's freed step buffers (docs/tiny-imagenet-full.md)."""
  _, calls = second_run
  # Between two releases: the evaluations of one epoch (teacher: 1 net; student_ce: the student and its EMA).
  assert [len(group) for group in "".join("|" if call == "release" else "e" for call in calls).split("|")
          if group] == [1, 1, 2, 2], calls
