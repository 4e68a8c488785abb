"""Shared test helpers: tiny configs that run the real code in seconds on a 2-core CPU.

One JAX compilation cache serves the whole test run: this process and every kdjax process the tests start (they
inherit the environment), so each distinct program is compiled once per run. A cached executable is the program XLA
compiled, so it computes the same bits; a run's cache lives in a temporary folder removed at exit. A
JAX_COMPILATION_CACHE_DIR set by the caller is used as it is.

Most tests compile with XLA's optimisations off (jax_disable_most_optimizations: the XLA compile, the largest
share of the suite's time, takes about half as long); the programs compute the same functions, with float32
rounding that may differ from an optimised build's. Tests that compare numbers against float64 or published
references carry the `optimized` mark (module-wide: `pytestmark = pytest.mark.optimized`) and run fully optimised,
they and the kdjax processes they start. Not marked, although they compare with references: modules whose compared
numbers are computed op by op (nothing jitted: each op is compiled alone, so there is nothing for the optimisations
to fuse, and its optimised compile costs ~10x: parity/test_ema 23.5 s -> 2.3 s of XLA compile), and
those that compare two computations of one build in float64 (nets/test_block_conv), and nets/test_onednn_conv,
whose bounds' XLA float32 floors are the same in both settings. JAX_DISABLE_MOST_OPTIMIZATIONS
set by the caller is used as it is.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # before JAX is imported: it reads these once
  _CACHE = tempfile.mkdtemp(prefix="kdjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import collections  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from kdjax.config import defaults as config_lib

jax.config.update("jax_default_matmul_precision", "highest")
_UNOPTIMIZED_DEFAULT = jax.config.read("jax_disable_most_optimizations")   # as JAX parsed the environment

# Where this process's time goes in JAX's compiler: seconds per stage, summed over the run (kdjax processes the
# tests start are not counted). Printed in the terminal summary.
_COMPILE_SECONDS = collections.Counter()
_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "tracing",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lowering",
                   "/jax/core/compile/backend_compile_duration": "XLA compile"}


def _count_compile_time(event, seconds, **_):
  if event in _COMPILE_EVENTS:
    _COMPILE_SECONDS[_COMPILE_EVENTS[event]] += seconds


jax.monitoring.register_event_duration_secs_listener(_count_compile_time)

# How often a compile found its program in the run's cache (another test, worker or kdjax process compiled it
# first): tests that share shapes share compiles.
_CACHE_LOOKUPS = collections.Counter()
_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


def _count_cache_lookup(event, **_):
  if event in _CACHE_EVENTS:
    _CACHE_LOOKUPS[_CACHE_EVENTS[event]] += 1


jax.monitoring.register_event_listener(_count_cache_lookup)


def pytest_terminal_summary(terminalreporter):
  if _COMPILE_SECONDS:
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in _COMPILE_SECONDS.items())
    terminalreporter.write_line(f"JAX compile time in the pytest process: {stages} "
                                f"(total {sum(_COMPILE_SECONDS.values()):.1f} s); compilation cache: "
                                f"{_CACHE_LOOKUPS['hits']} hits, {_CACHE_LOOKUPS['misses']} misses")


def tiny_config(**overrides):
  """The default study, shrunk: 16x16 digits, 256 train / 128 validation examples, 2 epochs. Whole batches (8 of
  32 to train, 2 of 64 to evaluate): each step and evaluation is one program, compiled once for every test that
  shares these shapes (a short last batch is a program of its own; runs with one: tests/support/ckpt.TINY)."""
  config = config_lib.default_config()
  config.epochs = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.progress = False
  config.log_every_epoch = False
  config.data.image_size = 16
  config.data.max_train_examples = 256
  config.data.max_val_examples = 128
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _set_optimized(optimized: bool) -> None:
  """Switches XLA's optimisations for this process's later compiles and for the processes it starts. The flag
  is read when a program is compiled and is not part of jit's in-memory cache key, so those caches are cleared
  (the persistent cache's key holds the compile options: an entry is only ever reused at its own setting)."""
  disabled = _UNOPTIMIZED_DEFAULT and not optimized
  if jax.config.read("jax_disable_most_optimizations") != disabled:
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1" if disabled else "0"
    jax.config.update("jax_disable_most_optimizations", disabled)
    jax.clear_caches()


@pytest.fixture(scope="module", autouse=True)
def xla_optimization(request):
  """Module-wide: `optimized` modules compile with XLA's optimisations, the rest as _UNOPTIMIZED_DEFAULT says.
  Autouse at module scope, so it runs before the module's own fixtures compile anything."""
  _set_optimized(request.node.get_closest_marker("optimized") is not None)
  yield


@pytest.fixture
def make_config():
  return tiny_config


@pytest.fixture
def kdjax_in_process(monkeypatch, capsys):
  """kdjax_main(*args, cwd=...)'s result for a usage mistake, --show_config or a run, computed in this process
  (tests/support/cli.py: kdjax_main_in_process)."""
  from tests.support import cli
  return lambda *args, cwd: cli.kdjax_main_in_process(*args, cwd=cwd, monkeypatch=monkeypatch, capsys=capsys)


@pytest.fixture(scope="module")
def one_torch_thread():
  """Tiny shapes: PyTorch's thread pool only spins against other processes on a shared 2-core machine."""
  import torch  # only the parity tests need it
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def highest_matmul_precision():
  with jax.default_matmul_precision("highest"):
    yield
