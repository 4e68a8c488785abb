"""kdjax.nets.onednn_conv: the convolutions in oneDNN through the XLA FFI compute lax.conv_general_dilated's function.

float64 XLA is the reference; "within float32 rounding" means oneDNN's float32 error against it is no larger than
XLA's own float32 error (times 4), or than eps32 * sqrt(terms summed) * max|value| (the random-walk size of float32
rounding in a sum), at every conv shape of both nets. The fallback tests run without
the extension (it is optional at build time).
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from kdjax import errors
from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.config import validation
from kdjax.nets import models
from kdjax.nets import onednn_conv

# Compiled at the suite's default setting (tests/conftest.py): the XLA float32 errors these bounds take as their
# floor measured the same with XLA's optimisations on and off (every net conv shape at 32x32, batch 5), and the
# XLA compile took half as long.

ROOT = pathlib.Path(__file__).resolve().parents[2]
EPS32 = float(np.finfo(np.float32).eps)
needs_onednn = pytest.mark.skipif(not onednn_conv.available(), reason=onednn_conv.unavailable_reason() or "-")


def _xla_conv(x, kernel, bias):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def _net_conv_shapes(image_size: int) -> list[tuple[int, int, int]]:
  """(side, in_channels, out_channels) of every conv of both nets on image_size x image_size x 3 inputs."""
  shapes = []
  for factory in (models.teacher_net, models.student_net):
    net, side, channels = factory(10), image_size, 3
    for index, features in enumerate(net.conv_features, start=1):
      shapes.append((side, channels, features))
      channels = features
      side //= 2 if index in net.pool_after else 1
  return sorted(set(shapes), reverse=True)


def _errors(fn, args64, cotangent64):
  """Max abs error of fn's float32 output and of its three gradients against float64 XLA, for fn and for XLA's
  own float32 (y, dx, dk, db each)."""
  def value_and_grads(conv, args, cotangent):
    y, vjp = jax.vjp(conv, *args)
    return (y, *vjp(cotangent))

  with jax.enable_x64(True):
    reference = jax.jit(lambda *a: value_and_grads(_xla_conv, a[:3], a[3]))(*args64, cotangent64)
  args32 = [a.astype(np.float32) for a in args64]
  cotangent32 = cotangent64.astype(np.float32)
  ours = jax.jit(lambda *a: value_and_grads(fn, a[:3], a[3]))(*args32, cotangent32)
  xla32 = jax.jit(lambda *a: value_and_grads(_xla_conv, a[:3], a[3]))(*args32, cotangent32)
  error = lambda got: [float(np.abs(np.asarray(g, np.float64) - np.asarray(r)).max()) for g, r in zip(got, reference)]
  scale = [float(np.abs(np.asarray(r)).max()) for r in reference]
  return error(ours), error(xla32), scale


@needs_onednn
# 32: every shape kind of both nets (3->12 and 12->12 at sides 32..2) in the quick tier; 64 (the study's sides) in
# the slow one, where its 12 s of float64 compiles do not hold up the inner loop.
@pytest.mark.parametrize("image_size", [pytest.param(64, marks=pytest.mark.slow), 32])
def test_forward_and_both_gradients_match_float64_xla_at_every_net_shape(image_size):
  rng = np.random.default_rng(image_size)
  for side, cin, cout in _net_conv_shapes(image_size):
    for batch in (1, 5, 37):   # one image, an odd batch, a short last batch
      x = rng.standard_normal((batch, side, side, cin))
      kernel = rng.uniform(-1, 1, (3, 3, cin, cout)) / np.sqrt(9 * cin)
      bias = rng.uniform(-0.3, 0.3, cout)
      cotangent = rng.standard_normal((batch, side, side, cout))
      ours, xla32, scale = _errors(onednn_conv.conv, (x, kernel, bias), cotangent)
      # Terms per sum: y and dx 9 C or 9 D; dkernel, dbias N H W (oneDNN sums those in long runs, XLA in a tree:
      # its dbias error is ~1e-7 relative, oneDNN's up to ~1e-5, both below eps * sqrt(terms)).
      terms = (9 * cin, 9 * cout, batch * side * side, batch * side * side)
      for name, got, floor, size, n in zip(("y", "dx", "dkernel", "dbias"), ours, xla32, scale, terms):
        bound = max(4 * floor, EPS32 * np.sqrt(n) * size)
        assert got <= bound, (name, batch, side, cin, cout, got, floor, size)


@needs_onednn
def test_oneDNN_picks_its_direct_kernels_not_the_gemm_fallback():
  """NHWC activations with oneDNN's own weight layout: every kind at every shape is a jit/brgconv kernel; plain
  HWIO weights would send the backward passes to the im2col + GEMM one (3x slower)."""
  for image_size in (64, 32):
    for side, cin, cout in _net_conv_shapes(image_size):
      for batch in (128, 1, 37):
        for kind in onednn_conv.KINDS:
          impl = onednn_conv.implementation(kind, batch, side, side, cin, cout)
          assert "gemm" not in impl and "ref" not in impl, (kind, batch, side, cin, cout, impl)


@needs_onednn
def test_primitives_are_created_once_per_shape_not_per_call():
  x = jnp.ones((3, 12, 10, 4), jnp.float32)   # a shape nothing else uses
  kernel, bias = jnp.full((3, 3, 4, 5), 0.1, jnp.float32), jnp.zeros(5, jnp.float32)
  grads = jax.jit(jax.grad(lambda x, k, b: jnp.sum(onednn_conv.conv(x, k, b) ** 2), argnums=(0, 1, 2)))
  before = onednn_conv.cached_primitives()
  jax.block_until_ready(grads(x, kernel, bias))
  assert onednn_conv.cached_primitives() == before + 3   # forward, backward data, backward weights
  for _ in range(3):
    jax.block_until_ready(grads(x + 1, kernel, bias))
  assert onednn_conv.cached_primitives() == before + 3


@needs_onednn
def test_same_inputs_give_the_same_bits_run_to_run():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((37, 32, 32, 12)).astype(np.float32)
  kernel = rng.standard_normal((3, 3, 12, 12)).astype(np.float32)
  bias = rng.standard_normal(12).astype(np.float32)
  loss = lambda x, k, b: jnp.sum(jnp.sin(onednn_conv.conv(x, k, b)))
  first = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, kernel, bias)
  for _ in range(2):   # the same compiled function, and a fresh compile
    again = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, kernel, bias)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
      np.testing.assert_array_equal(a, b)


@needs_onednn
@pytest.mark.parametrize("factory", [models.teacher_net, models.student_net])
def test_whole_net_gradients_match_float64_xla(factory):
  """Both nets' logits and parameter gradients through oneDNN against float64 XLA, as close as XLA's float32."""
  image_shape = (32, 32, 3)
  on_onednn, on_xla = factory(10, engine="onednn"), factory(10)
  params = models.init_params(on_xla, jax.random.PRNGKey(0), image_shape)
  images = np.random.default_rng(1).standard_normal((5, *image_shape)).astype(np.float32)
  labels = np.arange(5) % 10

  def loss(model):
    def fn(p, x):
      logits = model.apply({"params": p}, x)
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(5), labels]), logits
    return jax.jit(jax.value_and_grad(fn, has_aux=True))

  (_, logits), grads = loss(on_onednn)(params, images)
  (_, logits32), grads32 = loss(on_xla)(params, images)
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)
    (_, logits64), grads64 = loss(on_xla)(params64, images.astype(np.float64))
  check = lambda got, floor, ref: float(np.abs(got - ref).max()) <= 4 * float(np.abs(floor - ref).max()) + \
      1e-6 * float(np.abs(ref).max())
  assert check(np.asarray(logits), np.asarray(logits32), np.asarray(logits64))
  for path, got in jax.tree_util.tree_leaves_with_path(grads):
    floor = np.asarray(_at(grads32, path))
    assert check(np.asarray(got), floor, np.asarray(_at(grads64, path))), path


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@needs_onednn
def test_auto_runs_float32_in_oneDNN_and_float64_in_xla():
  model = models.student_net(10, engine="auto")
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  images = np.zeros((2, 16, 16, 3), np.float32)
  hlo = jax.jit(model.apply).lower({"params": params}, images).as_text()
  assert hlo.count("kdjax_onednn_conv_forward") == 4
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), params)
    hlo64 = jax.jit(model.apply).lower({"params": params64}, images.astype(np.float64)).as_text()
    assert "kdjax_onednn" not in hlo64 and "convolution" in hlo64
    # float32 images with float64 parameters promote to a float64 conv, as nn.Conv's do
    assert "kdjax_onednn" not in jax.jit(model.apply).lower({"params": params64}, images).as_text()
  with jax.enable_x64(True), pytest.raises(ValueError, match="engine 'onednn'.*float64"):
    models.student_net(10, engine="onednn").apply({"params": params64}, images.astype(np.float64))


def test_speed_conv_config_values_and_older_workdirs():
  config = config_lib.default_config()
  assert config.speed.conv == "auto"
  config.speed.conv = "winograd"
  with pytest.raises(errors.ConfigError, match=r"^speed.conv must be one of \('auto', 'xla', 'blocks'"):
    validation.validate(config)
  for mode, teacher, student in (("xla", ("xla", "blocks"), ("xla", "xla")),
                                 ("blocks", ("xla", "blocks"), ("xla", "blocks")),
                                 ("onednn", ("onednn", "blocks"), ("onednn", "xla"))):
    config.speed.conv = mode
    assert (config_nets.from_config("teacher", 10, config).engine, config_nets.from_config("teacher", 10, config).conv) == teacher
    assert (config_nets.from_config("student", 10, config).engine, config_nets.from_config("student", 10, config).conv) == student
  # A workdir from before speed.conv existed computed in XLA: resuming it with today's default is a change, named;
  # its nets are rebuilt as they were (XLA, its speed.{net}_conv).
  current = json.loads(config_lib.default_config().to_json_best_effort())
  older = json.loads(config_lib.default_config().to_json_best_effort())
  del older["speed"]["conv"]
  assert config_lib.differences(older, current) == ['speed.conv ("xla" -> "auto")']
  teacher = config_nets.from_config("teacher", 10, ml_collections.ConfigDict(older))
  assert (teacher.engine, teacher.conv) == ("xla", "blocks")
  older["mesh"]["num_devices"] = 2   # several devices: auto keeps XLA
  older["speed"]["conv"] = "auto"
  engine, conv, why = config_nets.conv_engine(ml_collections.ConfigDict(older), "student")
  assert (engine, conv) == ("xla", "xla") and "2 data-parallel devices" in why


def test_without_the_extension_auto_uses_xla_and_says_why(monkeypatch):
  monkeypatch.setattr(onednn_conv, "_load", lambda: (None, "oneDNN extension not built: no C++ compiler"))
  config = config_lib.default_config()
  validation.validate(config)   # auto is fine without it
  for net in ("teacher", "student"):
    engine, conv, why = config_nets.conv_engine(config, net)
    assert engine == "xla" and why == (f"speed.conv auto: oneDNN extension not built: no C++ compiler; XLA with "
                                       f"speed.{net}_conv {conv}")
  assert config_nets.describe(config)["teacher"]["path"] == "xla (pixel blocks)"
  model = config_nets.from_config("student", 10, config)
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  assert "kdjax_onednn" not in jax.jit(model.apply).lower({"params": params}, np.zeros((1, 16, 16, 3),
                                                                                        np.float32)).as_text()
  config.speed.conv = "onednn"
  with pytest.raises(errors.ConfigError, match=r"^speed.conv 'onednn' cannot run here: oneDNN extension not "
                                                   r"built: no C\+\+ compiler$"):
    validation.validate(config)


def test_the_environment_variable_turns_it_off_in_a_fresh_process():
  code = ("from kdjax.nets import onednn_conv; from kdjax.config import nets as config_nets, defaults; "
          "c = defaults.default_config(); "
          "print(onednn_conv.unavailable_reason()); print(config_nets.describe(c)['student'])")
  env = dict(os.environ, KDJAX_ONEDNN="0", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
  assert out.splitlines() == ["disabled by KDJAX_ONEDNN=0",
                              "{'path': 'xla', 'why': 'speed.conv auto: disabled by KDJAX_ONEDNN=0; XLA with "
                              "speed.student_conv xla'}"]


@pytest.mark.slow  # compiles nothing: the compiler is missing on purpose
def test_setup_builds_without_a_compiler_and_records_why(tmp_path):
  for name in ("pyproject.toml", "README.md", "kdjax/nets/onednn_build.py", "kdjax/nets/_onednn.cc"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / name, tmp_path / name)
  env = dict(os.environ, CC="/nonexistent/cc", CXX="/nonexistent/c++")
  result = subprocess.run([sys.executable, "kdjax/nets/onednn_build.py", "build_ext", "--inplace"], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert not list((tmp_path / "kdjax" / "nets").glob("_onednn*.so"))
  reason = (tmp_path / "kdjax" / "nets" / onednn_conv.STATUS_FILE).read_text()
  # The compiler is the reason where the oneDNN headers are installed (a developer's venv); in a venv with only the
  # runtime (what `pip install -e .` leaves: the headers live in the isolated build environment) it is the headers.
  assert ("/nonexistent/c" in reason or "not found" in reason or "No such file" in reason
          or "onednn-devel-cpu-gomp" in reason), reason


@needs_onednn
def test_the_thread_count_does_not_change_the_bits():
  """Measured on this CPU (AVX-512 brgconv/jit kernels): oneDNN splits these convs' work, not their sums, across
  threads, so 1 and 2 threads give the same bits (README: what changes with the thread count)."""
  rng = np.random.default_rng(1)
  grads = jax.jit(jax.value_and_grad(lambda x, k, b: jnp.sum(jnp.sin(onednn_conv.conv(x, k, b))), argnums=(0, 1, 2)))
  threads = onednn_conv.threads()
  try:
    for shape in ((37, 32, 32, 12), (9, 64, 64, 3)):
      x = rng.standard_normal(shape).astype(np.float32)
      kernel = rng.standard_normal((3, 3, shape[-1], 12)).astype(np.float32)
      bias = rng.standard_normal(12).astype(np.float32)
      results = []
      for count in (1, 2):
        onednn_conv.set_threads(count)
        results.append(jax.tree.map(np.asarray, grads(x, kernel, bias)))
      for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_array_equal(a, b)
  finally:
    onednn_conv.set_threads(threads)


@pytest.mark.parametrize("name, value", [("KDJAX_ONEDNN_THREADS", "abc"), ("KDJAX_ONEDNN_THREADS", "0"),
                                         ("KDJAX_ONEDNN_THREADS", "1.5"), ("OMP_NUM_THREADS", "-2"),
                                         ("OMP_NUM_THREADS", "two")])
def test_a_bad_thread_count_is_refused_in_one_line_naming_the_variable(monkeypatch, name, value):
  monkeypatch.delenv("KDJAX_ONEDNN_THREADS", raising=False)
  monkeypatch.setenv(name, value)
  with pytest.raises(errors.ConfigError, match=rf"^environment variable {name}='{value}': oneDNN's thread count "
                                               rf"must be a whole number >= 1, or {name} unset$"):
    onednn_conv.thread_setting()


def test_the_thread_count_comes_from_KDJAX_ONEDNN_THREADS_then_OMP_NUM_THREADS_then_the_cores(monkeypatch):
  monkeypatch.delenv("KDJAX_ONEDNN_THREADS", raising=False)
  monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
  assert onednn_conv.thread_setting() == (len(os.sched_getaffinity(0)), "the cores this process may use")
  monkeypatch.setenv("OMP_NUM_THREADS", "3,2")   # OpenMP's nested list: its first level
  assert onednn_conv.thread_setting() == (3, "OMP_NUM_THREADS=3,2")
  monkeypatch.setenv("KDJAX_ONEDNN_THREADS", " 1 ")
  assert onednn_conv.thread_setting() == (1, "KDJAX_ONEDNN_THREADS=1")


def _fresh_kdjax(env: dict, *args: str) -> subprocess.CompletedProcess:
  full = {key: value for key, value in os.environ.items() if key not in ("KDJAX_ONEDNN_THREADS", "OMP_NUM_THREADS")}
  return subprocess.run([sys.executable, *args], env=dict(full, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **env),
                        capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("env", [{"KDJAX_ONEDNN_THREADS": "abc"},
                                 pytest.param({"KDJAX_ONEDNN": "yes"}, marks=pytest.mark.slow)])   # a fresh process each
def test_the_cli_refuses_a_bad_oneDNN_variable_in_one_line_exit_2(tmp_path, env):
  """The issue: KDJAX_ONEDNN_THREADS=abc gave a 51-line traceback."""
  result = _fresh_kdjax(env, "-m", "kdjax.main", "--config", "ema.py", f"--workdir={tmp_path / 'run'}")
  (name, value), = env.items()
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.splitlines() == [f"kdjax: error: environment variable {name}={value!r}: " +
                                        result.stderr.split(f"{value!r}: ", 1)[1].strip()], result.stderr


def test_the_benchmark_refuses_a_bad_oneDNN_variable_in_one_line_exit_2():
  """Its plain mode too (it gave a traceback): one line naming the variable, exit 2."""
  result = _fresh_kdjax({"KDJAX_ONEDNN_THREADS": "abc"}, "-m", "kdjax.tools.benchmark", "--steps=1", "--repeats=1")
  assert result.returncode == 2, result.stderr[-2000:]
  assert [line for line in result.stderr.splitlines() if line.strip()] == [
      "kdjax.tools.benchmark: error: environment variable KDJAX_ONEDNN_THREADS='abc': oneDNN's thread count must be "
      "a whole number >= 1, or KDJAX_ONEDNN_THREADS unset"], result.stderr


@needs_onednn
def test_OMP_NUM_THREADS_is_honoured_and_what_the_report_says_is_true():
  """The issue: OMP_NUM_THREADS=1 was overridden by the core count while report.json said "2 OpenMP threads"."""
  code = ("from kdjax.nets import onednn_conv; from kdjax.config import nets, defaults; "
          "print(onednn_conv.threads(), onednn_conv.thread_setting()[1]); "
          "print(nets.describe(defaults.default_config())['student']['why'])")
  for env, threads, source in (({"OMP_NUM_THREADS": "1"}, 1, "OMP_NUM_THREADS=1"),
                               ({"OMP_NUM_THREADS": "1", "KDJAX_ONEDNN_THREADS": "3"}, 3, "KDJAX_ONEDNN_THREADS=3")):
    result = _fresh_kdjax(env, "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    first, why = result.stdout.splitlines()
    assert first == f"{threads} {source}" and f", {threads} OpenMP threads" in why, result.stdout


@needs_onednn
def test_gnu_openmp_waits_passively_unless_the_user_chose_and_children_do_not_inherit_it():
  """The issue: under load the OpenMP workers' spinning made a tiny teacher step 625 ms with oneDNN against 3.3 ms
  with XLA (passive: 7.4 ms). libgomp's own report of its settings (omp_display_env) after the extension loads."""
  code = ("import ctypes, os; from kdjax.nets import onednn_conv; onednn_conv.library(); "
          "print(onednn_conv.wait_policy()); print(os.environ.get('OMP_WAIT_POLICY')); "
          "ctypes.CDLL('libgomp.so.1').omp_display_env(0)")
  for env, said, inherited, gomp in (({}, "passive", "None", "PASSIVE"),
                                     ({"OMP_WAIT_POLICY": "active"}, "OMP_WAIT_POLICY=active", "active", "ACTIVE")):
    result = _fresh_kdjax(dict({"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": ""}, **env), "-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[:2] == [said, inherited], result.stdout
    assert f"OMP_WAIT_POLICY = '{gomp}'" in result.stderr, result.stderr[-2000:]
