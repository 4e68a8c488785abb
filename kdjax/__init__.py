"""kdjax: the original's teacher/student knowledge-distillation study, rebuilt in JAX/Flax.

From Python (a notebook):

    import kdjax
    config = kdjax.configs.get("ema", epochs=2)    # a shipped config by name (or a file's path), fields changed
    report = kdjax.run(config, "runs/ema")         # report.json's content; also writes WORKDIR as the CLI does

`import kdjax` loads neither JAX nor the data libraries: `run`, `configs` and the error types (`ConfigError`,
`DataError`, `CheckpointError`, `DivergenceError`, `WriteError`) are imported when first used.
"""

import contextlib
import importlib

__version__ = "0.1.0"
_ERRORS = ("ConfigError", "DataError", "CheckpointError", "DivergenceError", "WriteError")
__all__ = ["run", "configs", *_ERRORS]

# kdjax.configs: the shipped configs by name or path (kdjax/config/lookup.py); errors from kdjax/errors.py.
_LAZY = {"configs": ("kdjax.config.lookup", None), **{name: ("kdjax.errors", name) for name in _ERRORS}}


def run(config, workdir, *, verbose: bool = False) -> dict:
  """Runs the study of `config` (a ConfigDict, or a shipped config's name) in `workdir`; returns report.json's
  content. An existing run in `workdir` is resumed, as on the command line.

  Prints nothing unless `verbose` (then the command line's lines: one per model and epoch, compiles and
  evaluations, the report); the lines go to the `kdjax` logger at INFO either way, so
  `logging.basicConfig(level=logging.INFO)` (or `logging.getLogger("kdjax").setLevel(logging.INFO)` with a
  handler) shows them too. Raises kdjax.ConfigError or kdjax.DataError (one line, as the command line prints
  them: what was asked cannot run), or kdjax.CheckpointError, kdjax.DivergenceError, kdjax.WriteError (a run that
  broke).
  """
  from kdjax.config import lookup as configs_lib
  from kdjax.errors import ConfigError
  from kdjax.study import experiment
  from kdjax import progress
  if isinstance(config, str):
    config = configs_lib.get(config)
  if not hasattr(config, "to_dict") or not hasattr(config, "get_ref"):
    raise ConfigError(f"config: a {type(config).__name__} is not a kdjax config; pass a shipped config's name "
                      f"or kdjax.configs.get(NAME, field=value, ...) (e.g. kdjax.configs.get(\"kd\", epochs=1))")
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
