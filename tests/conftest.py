"""Shared test helpers: tiny configs that run the real code in seconds on a 2-core CPU.

One JAX compilation cache serves the whole test run: this process and every kdjax process the tests start (they
inherit the environment), so each distinct program is compiled once per run. A cached executable is the program XLA
compiled, so it computes the same bits; a run's cache lives in a temporary folder removed at exit. A
JAX_COMPILATION_CACHE_DIR set by the caller is used as it is.
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

import jax  # noqa: E402
import pytest  # noqa: E402

from kdjax.config import defaults as config_lib

jax.config.update("jax_default_matmul_precision", "highest")


def tiny_config(**overrides):
  """The default study, shrunk: 16x16 digits, 240 train / 120 validation examples, 2 epochs."""
  config = config_lib.default_config()
  config.epochs = 2
  config.batch_size = 32
  config.eval_batch_size = 64
  config.progress = False
  config.log_every_epoch = False
  config.data.image_size = 16
  config.data.max_train_examples = 240
  config.data.max_val_examples = 120
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture
def make_config():
  return tiny_config


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
