"""kdjax.tools.benchmark (one module per mode) runs its real code on tiny shapes: the structure of what it reports,
not the speed; its steps are the study's own."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from kdjax.nets import onednn_conv
from kdjax.tools.benchmark import compare_torch
from kdjax.tools.benchmark import data_parallel
from kdjax.tools.benchmark import plain
from kdjax.tools.benchmark import profile
from kdjax.tools.benchmark import steps
from kdjax.tools.benchmark import study
from kdjax.tools.benchmark import timing
from kdjax.tools.benchmark import torch_peer
from kdjax.nets import models
from tests.conftest import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = dict(batch_size=4, image_size=16, num_classes=10, steps=1, repeats=1)


def test_train_flops_count_three_passes_but_the_first_input_gradient():
  student = models.student_net(200)
  forward = models.flops_per_image(student, (64, 64, 3))
  assert steps.train_flops_per_image(student, (64, 64, 3)) == 3 * forward - 2 * 64 * 64 * 3 * 12 * 9


def test_plain_mode_reports_each_kind_and_evaluation():
  figures = plain.plain(**TINY, eval_batch_size=8, kinds=("student_kd",))
  assert set(figures["results"]) == {"student_kd", "eval_teacher", "eval_student"}
  row = figures["results"]["student_kd"]
  assert row["images_per_second"] > 0 and row["compile_s"] > 0
  assert row["cache_images_per_second"] > 0  # the cached-logit KD step, with its one-off teacher forward


def test_data_parallel_mode_on_one_device_times_the_single_device_feed():
  figures = data_parallel.data_parallel(batch_size=4, image_size=16, num_classes=10, steps=1, repeats=1)
  assert figures["mode"] == "data_parallel" and figures["devices"] == 1
  for kind in ("teacher_ce", "student_kd_ema"):
    assert list(figures["results"][kind]) == ["device_gather"]
    assert figures["results"][kind]["device_gather"]["images_per_second"] > 0


@pytest.fixture(scope="module")
def tuned_peer():
  """The module's PyTorch child with the tuned allocator (torch_peer.Peer: python -m parity.torch_child), started
  once for the tests that step and time in it."""
  peer = torch_peer.Peer("tuned")
  yield peer
  peer.close()


class _Kept:
  """`peer` handed to code that closes what it started: its close leaves the child to the module's fixture."""

  def __init__(self, peer):
    self._peer = peer

  def __getattr__(self, name):
    return getattr(self._peer, name)

  def close(self):
    pass


def test_compare_torch_rows_hold_every_variant_and_ratios_to_the_faster_torch(one_torch_thread, tuned_peer,
                                                                              monkeypatch):
  started = []
  monkeypatch.setattr(torch_peer, "Peer", lambda allocator: started.append(allocator) or _Kept(tuned_peer))
  figures = compare_torch.compare_torch(**TINY, peak_gflops=100.0, kinds=("student_kd",))
  assert started == ["tuned"]   # its default: one child, the tuned allocator's
  threads = figures["threads"]
  assert threads["jax"] == timing.core_count() and 1 in threads["torch"]
  row = figures["kinds"]["student_kd"]
  expected = {"kdjax", "kdjax_before"} | {f"torch_{layout}_{count}t" for layout in ("nchw", "channels_last")
                                          for count in threads["torch"]}
  assert set(row["variants"]) == expected
  for name, variant in row["variants"].items():
    assert variant["images_per_second"] > 0 and variant["gflops"] > 0
    assert variant["peak_fraction"] == pytest.approx(variant["gflops"] / 100.0)
    assert (variant["compile_s"] is not None) == name.startswith("kdjax")
  # The cached step executes no teacher forward: fewer FLOPs per image than the inline ones.
  assert row["variants"]["kdjax"]["gflops"] / row["variants"]["kdjax"]["images_per_second"] < \
      row["variants"]["kdjax_before"]["gflops"] / row["variants"]["kdjax_before"]["images_per_second"]
  summary = row["summary"]
  for layout in ("nchw", "channels_last"):
    best = summary[f"torch_{layout}_threads"]
    rates = {count: row["variants"][f"torch_{layout}_{count}t"]["images_per_second"] for count in threads["torch"]}
    assert rates[best] == max(rates.values())
    assert summary[f"vs_torch_{layout}"] == pytest.approx(row["variants"]["kdjax"]["images_per_second"] / rates[best])
  json.dumps(figures, default=float)


def _layer_counts(ops) -> dict:
  """How many of the step's layers each op name covers."""
  counts = {}
  for op in ops:
    counts[op["op"]] = counts.get(op["op"], 0) + len(op["layers"])
  return counts


def test_profile_lists_every_op_of_the_teacher_step():
  ops = profile.step_ops("teacher_ce", 4, 64, 200)
  counts = _layer_counts(ops)
  assert counts["conv forward"] == 12 and counts["conv weight grad"] == 12 and counts["conv input grad"] == 11
  assert counts["pool"] == 4
  conv = next(op for op in ops if op["op"] == "conv weight grad" and op["shape"][1] == 64 and op["shape"][3] == 12)
  assert conv["layers"] == [2, 3] and conv["flops"] == 2 * 4 * 64 * 64 * 12 * 12 * 9
  pool = next(op for op in ops if op["op"] == "pool")
  timings = profile.op_timers(dict(pool, shape=(2, 8, 8, 12)), 10, None, None, 1)
  assert [label for label, *_ in timings] == ["kdjax", "nn.max_pool"]
  if onednn_conv.available():   # after oneDNN convs kdjax pools in oneDNN: XLA's pool beside it
    timings = profile.op_timers(dict(pool, shape=(2, 8, 8, 12)), 10, None, None, 1, onednn=True)
    assert [label for label, *_ in timings] == ["kdjax", "xla_path", "nn.max_pool"]
    assert all(seconds > 0 for _, *both in timings for seconds in both)
  # The teacher's convs run on blocks (speed.teacher_conv): kdjax's way is the blocked layer, nn.Conv beside it;
  # a side too small for blocks is nn.Conv's own.
  conv_timings = profile.op_timers(dict(conv, shape=(2, 8, 8, 12)), 10, None, None, 1)
  assert [label for label, _ in conv_timings] == ["kdjax", "nn.Conv", "xla_default"]
  conv_timings = profile.op_timers(dict(conv, shape=(2, 2, 2, 12)), 10, None, None, 1)
  assert [label for label, _ in conv_timings] == ["kdjax", "xla_default"]


def test_profile_lists_every_op_of_the_student_step():
  ops = profile.step_ops("student_ce", 4, 64, 200)
  counts = _layer_counts(ops)
  assert counts["conv forward"] == 4 and counts["conv weight grad"] == 4 and counts["conv input grad"] == 3
  assert counts["pool"] == 4 and {op["net"] for op in ops} == {"student"}
  sides = [op["shape"][1] for op in ops if op["op"] == "conv forward"]
  assert sides == [64, 32, 16, 8]
  dense = next(op for op in ops if op["op"].startswith("dense"))
  assert dense["shape"] == (4, 4 * 4 * 12)
  # The student's convs are nn.Conv's under XLA (speed.student_conv), never blocks.
  conv = next(op for op in ops if op["op"] == "conv weight grad" and op["shape"][1] == 32)
  conv_timings = profile.op_timers(dict(conv, shape=(2, 8, 8, 12)), 10, None, None, 1)
  assert [label for label, _ in conv_timings] == ["kdjax", "xla_default"]


@pytest.mark.slow   # every phase of a study in both frameworks, PyTorch in two children (one per allocator)
def test_study_runs_every_phase_in_both_frameworks(one_torch_thread, tuned_peer, monkeypatch):
  config = tiny_config(epochs=1, **{"data.max_train_examples": 64, "data.max_val_examples": 32,
                                    "phases": ("teacher", "student_ce", "student_kd", "student_kd_ema")})
  started, start = [], torch_peer.Peer   # the tuned child is the module's; the plain one is started here
  monkeypatch.setattr(torch_peer, "Peer", lambda allocator: started.append(allocator) or (
      _Kept(tuned_peer) if allocator == "tuned" else start(allocator)))
  figures = study.study(config, torch_threads=1)
  assert started == ["tuned", "plain"]
  assert list(figures["phases"]) == ["teacher", "student_ce", "student_kd", "student_kd_ema"]
  for row in figures["phases"].values():
    assert row["kdjax_train_s"] > 0 and row["torch_train_s"] > 0
  assert figures["torch"]["threads"] == 1 and figures["torch"]["layout"] == "channels_last"
  assert figures["wall"]["kdjax_s"] > figures["train"]["kdjax_s"]
  # PyTorch ran in a child per allocator; the faster is the one compared, and both totals are kept.
  totals = figures["torch"]["allocators"]
  assert set(totals) == {"tuned", "plain"} and figures["torch"]["allocator"] == min(totals, key=totals.get)
  assert figures["train"]["torch_s"] == pytest.approx(totals[figures["torch"]["allocator"]])


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "kdjax.tools.benchmark", *args], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)


def _cli_in_process(capsys, *args):
  """_cli's result from the command's main in this process (a usage mistake ends it with SystemExit)."""
  from kdjax.tools.benchmark import __main__ as command
  capsys.readouterr()
  try:
    code = command.main(list(args))
  except SystemExit as stop:
    code = stop.code
  out, err = capsys.readouterr()
  return subprocess.CompletedProcess(args, code, out, err)


@pytest.mark.parametrize("args,message,fresh", [
    (["--batch_size=0"], "batch_size", True),   # the command's fresh process; the others its main, in process
    (["--profile", "--study"], "choose one of", False),
    (["--image_size=40"], "multiple of 16", False),
    (["--study", "--config.data.name=imagenet21k"], "data.name", False),
    (["extra"], "unexpected arguments: extra", False),
])
def test_bad_cli_input_is_one_line_and_exit_2(capsys, args, message, fresh):
  result = _cli(*args) if fresh else _cli_in_process(capsys, *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kdjax.tools.benchmark: error:") and message in lines[0]


def test_a_benchmark_step_is_the_studys_own_step():
  """steps.prepare builds, initialises, gathers and jits as the study does (Setup.build, fresh_state, gather_batch,
  training/jit_step): its first step equals the study's Setup.train_step on a Setup built afresh from the same
  config and data, bit for bit."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from kdjax.study.builder import Setup
  from kdjax.training import train

  batch = steps.random_batch(4, 16, 10)
  prepared = steps.prepare("student_kd_ema", batch, 10)
  config = steps.step_config(batch_size=4)
  setup = Setup.build(config, steps.random_dataset(batch, 10))
  optimizer = setup.optimizer()
  study_batch = train.gather_batch({"image": setup.train_images, "label": setup.train_labels}, jnp.arange(4))
  expected, expected_metrics = setup.train_step("student_kd_ema", optimizer)(
      setup.fresh_state("student_kd_ema", optimizer), study_batch)
  state, metrics = prepared.step(prepared.state, prepared.batch)
  for got, want in zip(jax.tree_util.tree_leaves((state, metrics)),
                       jax.tree_util.tree_leaves((expected, expected_metrics))):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_each_mode_is_its_own_module_under_300_lines():
  folder = ROOT / "kdjax" / "tools" / "benchmark"
  for mode in ("plain", "compare_torch", "profile", "data_parallel", "study"):
    assert (folder / f"{mode}.py").is_file(), mode
  sizes = {path.name: len(path.read_text().splitlines()) for path in folder.glob("*.py")}
  assert all(size < 300 for size in sizes.values()), sizes


def test_the_pytorch_child_steps_on_the_benchmarks_batch_and_times_ops(tuned_peer):
  """torch_peer starts parity's child (python -m parity.torch_child): its runners step on the very batch kdjax's
  runners do (handed over as a file), and its op timers answer in profile's form."""
  batch = steps.random_batch(4, 16, 10)
  mean, std = steps.normalization(steps.step_config(), batch, 10)
  peer = tuned_peer
  assert peer.allocator == "tuned" and peer.info["malloc"]   # the child's answer to "info": its allocator's settings
  runner = peer.runner("student_kd", batch, mean, std, 10, 1, True, flops_per_image=7)
  runner.run(2)
  assert runner.flops_per_image == 7 and runner.compile_seconds is None
  conv = {"op": "conv weight grad", "shape": (2, 8, 8, 12), "cout": 12, "layers": [2], "flops": 1}
  assert peer.op_timers(conv, 10, 1, [1])["torch_cl"] > 0
  forward, backward = peer.op_timers({"op": "pool", "shape": (2, 8, 8, 12), "layers": [3]}, 10, 1, [1])["torch_cl"]
  assert forward > 0 and backward > 0
  assert peer.op_timers({"op": "Adam update", "shape": None, "layers": ["all"]}, 10, 1, [1]) == {}


def test_onednn_threads_refuses_a_bad_kind_in_one_line_exit_2():
  result = subprocess.run([sys.executable, "-m", "kdjax.tools.onednn_threads", "--kinds", "teacher_ce,nobody"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip() == ("kdjax.tools.onednn_threads: error: --kinds: unknown nobody; known: "
                                   f"{', '.join(steps.KINDS)}")
