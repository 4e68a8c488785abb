"""Data parallel over a jax.sharding.Mesh (kdjax/training/mesh.py): one device keeps today's program; 4 forced host devices
and 2 processes x 2 devices (jax.distributed over 127.0.0.1, gloo collectives) equal it to float32 reduction
order. The multi-device runs are subprocesses (tests/support/mesh.py); this process keeps its one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.store import checkpoints as ckpt_lib
from kdjax.config import validation as config_validation
from kdjax import errors
from kdjax.training import losses
from kdjax.training import mesh as mesh_lib
from kdjax.store import tensorboard
from kdjax.study.builder import Setup
from tests.support import mesh as mesh_support

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 240   # seconds per subprocess: a hung collective fails the test instead of blocking CI
MODELS = ("teacher", "student_kd", "student_kd_ema")
ADAM_STEP = 1e-3   # one Adam step at the tiny study's learning rate: assert_same_run's bound on any weight


def _run(args, timeout=TIMEOUT, **kwargs):
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, **kwargs)


def _study(workdir, devices: int):
  result = _run(["-m", "tests.support.mesh", str(workdir), str(devices)])
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads((workdir / "report.json").read_text())


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The tiny study (tests/support/mesh.py) on 1 device and on 4 forced host devices."""
  root = tmp_path_factory.mktemp("mesh")
  return {devices: (root / f"d{devices}", _study(root / f"d{devices}", devices)) for devices in (1, 4)}


def _params(workdir, model):
  tree, _, _ = ckpt_lib.ModelCheckpoints(workdir / "checkpoints" / model, read_only=True).restore()
  return tree


def assert_same_run(reference, other, reference_dir, other_dir):
  """Losses per step and parameters within float32 reduction-order tolerance; validation counts equal."""
  for name, entry in reference["models"].items():
    assert other["models"][name]["val_top1"] == entry["val_top1"], name
    np.testing.assert_allclose(other["models"][name]["val_loss"], entry["val_loss"], rtol=1e-5, err_msg=name)
    if entry["epochs"][-1]["train_loss"] is not None:
      np.testing.assert_allclose(other["models"][name]["epochs"][-1]["train_loss"],
                                 entry["epochs"][-1]["train_loss"], rtol=1e-5, err_msg=name)
  steps, other_steps = tensorboard.read(reference_dir), tensorboard.read(other_dir)
  for model in MODELS:
    losses_ref = steps[model][tensorboard.STEP_LOSS_TAG]
    assert len(losses_ref) == 8   # 238 rows in batches of 32: 7 full, one of 14 (padded to 32 on 4 devices)
    assert [step for step, _ in other_steps[model][tensorboard.STEP_LOSS_TAG]] == [s for s, _ in losses_ref]
    np.testing.assert_allclose([v for _, v in other_steps[model][tensorboard.STEP_LOSS_TAG]],
                               [v for _, v in losses_ref], rtol=1e-5, atol=1e-6, err_msg=model)
    saved, other_saved = _params(reference_dir, model), _params(other_dir, model)
    assert int(saved["step"]) == int(other_saved["step"]) == 8
    # Parameters after 8 Adam steps: a weight whose batch gradient nearly cancels gets it with a large relative
    # error from another reduction order, and Adam's normalised step (up to the learning rate, 1e-3, a step)
    # carries that into the weight. So: every weight within one Adam step, and at most 5 % of a tensor's weights
    # past float32 reduction-order tolerance (a gradient not reduced over the devices moves nearly all of them).
    # Measured on an AVX2 AMD EPYC: 6 of the teacher's 324 fc weights past 1e-6 (5.1e-06 at most), one conv
    # weight of 1,296 at 1.4e-05; none on AVX-512.
    for field in ("params", "teacher_params", "ema_params", "opt_state"):
      for a, b in zip(jax.tree_util.tree_leaves(saved.get(field)), jax.tree_util.tree_leaves(other_saved.get(field))):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=ADAM_STEP, err_msg=f"{model} {field}")
        past = ~np.isclose(b, a, rtol=1e-4, atol=1e-6)
        assert past.mean() <= 0.05, f"{model} {field}: {past.sum()} of {past.size} past reduction-order tolerance"


@pytest.mark.slow  # multi-device subprocess studies (the module fixture `runs`)
def test_four_devices_equal_one(runs):
  (one_dir, one), (four_dir, four) = runs[1], runs[4]
  assert one["environment"]["mesh"] == {"data": 1} and four["environment"]["mesh"] == {"data": 4}
  assert_same_run(one, four, one_dir, four_dir)


@pytest.mark.slow  # two processes over jax.distributed
def test_two_processes_equal_one_process_on_four_devices(runs, tmp_path):
  """2 processes x 2 forced host devices, jax.distributed on 127.0.0.1 with gloo: the same report; process 0
  alone writes metrics.jsonl, TensorBoard and the report, both write the (Orbax) checkpoints; a second launch
  on the workdir resumes: every phase is loaded from the multi-host checkpoints, nothing trained again."""
  four_dir, four = runs[4]
  workdir = tmp_path / "hosts"

  def launch():
    address = f"127.0.0.1:{_free_port()}"
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.support.mesh", str(workdir), "2", address, "2",
                               str(rank)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    outputs = []
    try:
      for proc in procs:
        outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    finally:
      for proc in procs:   # a failed peer must not leave the other waiting on a collective
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    for proc, output in zip(procs, outputs):
      assert proc.returncode == 0, output[-3000:]
    return outputs

  launch()
  report = json.loads((workdir / "report.json").read_text())
  assert report["environment"]["mesh"] == {"data": 4} and report["environment"]["processes"] == 2
  assert_same_run(four, report, four_dir, workdir)
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == len(four_dir.joinpath(
      "metrics.jsonl").read_text().splitlines())
  launch()
  again = json.loads((workdir / "report.json").read_text())
  assert sorted(again["checkpoints"]["loaded"]) == sorted(MODELS)
  for name, entry in report["models"].items():
    assert again["models"][name]["val_loss"] == entry["val_loss"], name


def test_batch_size_not_divisible_by_the_devices_is_one_line_exit_2(tmp_path):
  env_flags = "--xla_force_host_platform_device_count=4"
  result = subprocess.run(
      [sys.executable, "-m", "kdjax.main", "--config=kdjax/config/shipped/default.py", "--config.batch_size=30",
       f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, env={**os.environ, "XLA_FLAGS": env_flags, "JAX_PLATFORMS": "cpu"}, capture_output=True,
      text=True, timeout=TIMEOUT)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "batch_size must be divisible by the 4 data-parallel devices" in lines[0], lines
  assert "got 30" in lines[0] and not (tmp_path / "run").exists()


def test_one_device_keeps_the_single_device_program(make_config):
  """With one device nothing is sharded: the train split is one device array, the state unreplicated, no mask
  in the batch, so the compiled step is the one kdjax built before kdjax/training/mesh.py."""
  setup = Setup.build(make_config(**{"data.max_train_examples": 40, "data.max_val_examples": 20}))
  assert setup.parallel.mesh is None and setup.parallel.size == 1
  assert isinstance(setup.train_images, jax.Array)
  state = setup.fresh_state("teacher", setup.optimizer())
  assert setup.parallel.replicate(state) is state


@pytest.mark.parametrize("field, value, message", [
    ("mesh.num_devices", -1, "mesh.num_devices must be an integer >= 0"),
    ("distributed.num_processes", 0, "distributed.num_processes must be an integer >= 1"),
    ("distributed.process_id", 2, "distributed.process_id must be an integer in [0, 0]"),
    ("distributed.coordinator_address", "localhost", "distributed.coordinator_address must be"),
])
def test_bad_mesh_fields_name_the_field(make_config, field, value, message):
  with pytest.raises(errors.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
    config_validation.validate(make_config(**{field: value}))


def test_more_devices_than_jax_sees_names_the_field(make_config):
  with pytest.raises(errors.ConfigError, match=r"mesh.num_devices must be <= the 1 devices jax sees, got 4"):
    config = make_config(**{"mesh.num_devices": 4})
    mesh_lib.data_parallel(config.mesh.num_devices, config.batch_size, config.eval_batch_size)


def test_masked_mean_of_a_padded_batch_equals_the_short_batch_mean():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(14, 10)).astype(np.float32), rng.normal(size=(14, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 14)
  pad = lambda x: np.concatenate([x, np.repeat(x[:1], 18, axis=0)])
  mask = (np.arange(32) < 14).astype(np.float32)
  # Each loss jitted, as the steps use them (op by op, every primitive compiled alone took most of this test's time).
  cross_entropy = jax.jit(losses.cross_entropy)
  student_objective = jax.jit(losses.student_objective, static_argnums=(3, 4, 5))   # T and weights: constants
  for plain, masked in (
      (cross_entropy(student, labels), cross_entropy(pad(student), pad(labels), mask)),
      (student_objective(student, teacher, labels, 4.0, 1.0, 0.5),
       student_objective(pad(student), pad(teacher), pad(labels), 4.0, 1.0, 0.5, mask))):
    np.testing.assert_allclose(float(masked), float(plain), rtol=1e-6)
  # The gradient of the masked mean ignores the padding rows.
  grad = jax.jit(jax.grad(lambda s: losses.cross_entropy(s, jnp.asarray(pad(labels)), jnp.asarray(mask))))(
      pad(student))
  assert np.all(np.asarray(grad)[14:] == 0)


def test_the_support_config_ends_each_epoch_with_a_short_batch_not_divisible_by_4():
  config = mesh_support.config()
  assert config.data.max_train_examples % config.batch_size % 4 != 0
