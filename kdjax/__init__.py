"""kdjax: the original's teacher/student knowledge-distillation study, rebuilt in JAX/Flax.

From Python (a notebook):

    import kdjax
    config = kdjax.configs.get("ema", epochs=2)    # a shipped config by name (or a file's path), fields changed
    report = kdjax.run(config, "runs/ema")         # report.json's content; also writes WORKDIR as the CLI does

`import kdjax` loads neither JAX nor the data libraries: `run`, `configs`, `ConfigError` and `DataError` are
imported when first used.
"""

import contextlib
import importlib

__version__ = "0.1.0"
__all__ = ["run", "configs", "ConfigError", "DataError"]

# kdjax.configs: the shipped configs by name or path (kdjax/config/lookup.py); errors from kdjax/errors.py.
_LAZY = {"configs": ("kdjax.config.lookup", None), "ConfigError": ("kdjax.errors", "ConfigError"),
         "DataError": ("kdjax.errors", "DataError")}


def run(config, workdir, *, verbose: bool = False) -> dict:
  """Runs the study of `config` (a ConfigDict, or a shipped config's name) in `workdir`; returns report.json's
  content. An existing run in `workdir` is resumed, as on the command line.

  Prints nothing unless `verbose` (then the command line's lines: one per model and epoch, the report); the
  lines go to the `kdjax` logger at INFO either way. Raises ConfigError or DataError (one line, as the command
  line prints them), or CheckpointError, DivergenceError, WriteError.
  """
  from kdjax.config import lookup as configs_lib
  from kdjax.study import experiment
  from kdjax import progress
  if isinstance(config, str):
    config = configs_lib.get(config)
  with progress.printing() if verbose else contextlib.nullcontext():
    return experiment.train_and_evaluate(config, workdir)


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'kdjax' has no attribute {name!r}")
  module_name, attribute = _LAZY[name]
  module = importlib.import_module(module_name)
  return module if attribute is None else getattr(module, attribute)


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
