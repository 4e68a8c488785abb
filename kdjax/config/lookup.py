"""The shipped configs, by name or by path: `--config ema.py`, `kdjax.configs.get("ema", epochs=2)`.

Each module in kdjax/config/shipped/ is a config file: `get_config()` returns the study's ConfigDict (`kdjax.config.defaults.default_config()`
with a few fields changed), and the first line of its docstring says what it is for (`--help` lists them). The
repository's top-level configs/ holds links to these files, not copies.

What a config argument names (`path`):
  an existing file, relative to the working directory or absolute      that file
  NAME, NAME.py or configs/NAME.py, NAME a shipped config               kdjax/config/shipped/NAME.py
  anything else                                                         ConfigError listing the shipped configs
`FILE:ARG` calls `get_config(ARG)`, as ml_collections does; the shipped configs take no argument.
"""

import ast
import difflib
import importlib
import importlib.util
import inspect
import pathlib
import re

import ml_collections

from kdjax.config import defaults as config_lib
from kdjax.errors import ConfigError

_HERE = pathlib.Path(__file__).resolve().parent / "shipped"


def available() -> dict[str, str]:
  """Shipped config name -> the first line of its docstring (read, not executed)."""
  names = {}
  for file in sorted(_HERE.glob("*.py")):
    if not file.name.startswith("_"):
      docstring = ast.get_docstring(ast.parse(file.read_text())) or ""
      names[file.stem] = docstring.strip().splitlines()[0] if docstring.strip() else ""
  return names


def _shipped_name(value: str) -> str | None:
  """The shipped config that `value` names (NAME, NAME.py, configs/NAME.py), else None."""
  candidate = pathlib.PurePath(value)
  if len(candidate.parts) > 2 or (len(candidate.parts) == 2 and candidate.parts[0] != "configs"):
    return None
  name = candidate.name[:-3] if candidate.name.endswith(".py") else candidate.name
  return name if name in available() else None


def split_argument(value: str) -> tuple[str, str | None]:
  """`FILE:ARG` -> (FILE, ARG); `FILE` -> (FILE, None)."""
  file, colon, argument = value.partition(":")
  return file, (argument if colon else None)


def path(value: str) -> pathlib.Path:
  """The config file that `value` (a path or a shipped config's name, without `:ARG`) names; ConfigError
  naming the shipped configs when there is none."""
  if not value:
    raise ConfigError(f"config: empty; give a file or one of the shipped configs ({', '.join(available())})")
  candidate = pathlib.Path(value).expanduser()
  if candidate.is_file():
    return candidate.resolve()
  name = _shipped_name(value)
  if name is not None:
    return _HERE / f"{name}.py"
  near = difflib.get_close_matches(pathlib.PurePath(value).stem, list(available()), n=1)
  hint = f"; did you mean {near[0]}.py?" if near else ""
  raise ConfigError(f"config {value}: no such file, and not a shipped config "
                    f"({', '.join(f'{shipped}.py' for shipped in available())}){hint}")


def _where_in(file: pathlib.Path, error: BaseException) -> str:
  """`FILE:LINE` of the deepest frame of `error`'s traceback that runs in `file` (a raise inside get_config,
  or a line the module runs at import); `FILE` when none does."""
  line, traceback = None, error.__traceback__
  while traceback is not None:
    if pathlib.Path(traceback.tb_frame.f_code.co_filename).resolve() == file.resolve():
      line = traceback.tb_lineno
    traceback = traceback.tb_next
  return f"{file}:{line}" if line is not None else str(file)


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _module(file: pathlib.Path):
  """A shipped config is imported as kdjax.config.shipped.NAME; another file is executed as a fresh module.
  A user's file that does not compile or raises while it runs is a ConfigError naming `FILE:LINE`."""
  if file.parent == _HERE:
    return importlib.import_module(f"kdjax.config.shipped.{file.stem}")
  spec = importlib.util.spec_from_file_location(f"kdjax_config_file_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as error:   # IndentationError included; its own filename/lineno, not a frame of the file
    column = f", column {error.offset}" if error.offset else ""
    raise ConfigError(f"config {error.filename or file}:{error.lineno}: {type(error).__name__}: {error.msg}"
                      f"{column}") from None
  except Exception as error:  # noqa: BLE001  (whatever a user's file raises; its line is what they need)
    # chained: a Python caller keeps the traceback; the command line prints the one line only
    raise ConfigError(f"config {_where_in(file, error)}: {_one_line(error)} (while loading the file)") from error
  return module


def load(value: str) -> ml_collections.ConfigDict:
  """The locked ConfigDict of `value` (`FILE` or `FILE:ARG`, FILE a path or a shipped config's name). A user's
  file that does not compile, raises, or whose get_config() returns anything but a ConfigDict is a ConfigError
  of one line naming the file (and the line of the raise)."""
  file_value, argument = split_argument(value)
  file = path(file_value)
  module = _module(file)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config {file}: defines no get_config()")
  try:
    takes_argument = bool(inspect.signature(module.get_config).parameters)
  except (TypeError, ValueError):   # a builtin or odd callable: let the call below say what is wrong
    takes_argument = argument is not None
  if argument is not None and not takes_argument:
    raise ConfigError(f"config {value}: get_config() of {file.name} takes no argument; change fields with "
                      f"overrides instead (e.g. --config.epochs=2)")
  try:
    config = module.get_config(argument) if argument is not None else module.get_config()
  except Exception as error:  # noqa: BLE001
    raise ConfigError(f"config {_where_in(file, error)}: {_one_line(error)} (in get_config())") from error
  if not isinstance(config, ml_collections.ConfigDict):
    shown = repr(config)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ConfigError(f"config {file}: get_config() returned {type(config).__name__} {shown}, not an "
                      f"ml_collections.ConfigDict (start from kdjax.config.default_config())")
  config.lock()  # a misspelled field raises instead of adding a new one
  return config


def field_names(config: ml_collections.ConfigDict) -> list[str]:
  """Every field as a dotted name, parents included (`kd`, `kd.temperature`, ...)."""
  names = []

  def walk(node, prefix):
    for key, value in node.items():
      names.append(prefix + key)
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, prefix + key + ".")
  walk(config, "")
  return names


# Names from the KD and EMA literature (and other codebases) that are not kdjax's fields: a field that does not
# exist but whose last part is one of these points at the field that does it. Keyed by the last part, lower case;
# the value is {section or None (any): the pointer}.
_KD_WEIGHTS = ("kd.kd_weight and kd.ce_weight (the loss is kd_weight * KL * T^2 + ce_weight * CE; Hinton's "
               "alpha * KD + (1 - alpha) * CE is kd_weight=alpha, ce_weight=1-alpha)")
_EMA_DECAY = "ema.decay (the original's EMA alpha: teacher = alpha * teacher + (1 - alpha) * student)"
_LEARNING_RATE = "optimizer.learning_rate (with optimizer.schedule)"
CONCEPTS = {
    "alpha": {"kd": _KD_WEIGHTS, "ema": _EMA_DECAY, None: f"{_KD_WEIGHTS}; or, for the EMA teacher, {_EMA_DECAY}"},
    "beta": {None: _KD_WEIGHTS},
    "lambda": {None: _KD_WEIGHTS},
    "weight": {"kd": _KD_WEIGHTS},
    "t": {None: "kd.temperature (T in KL(softmax(t/T) || softmax(s/T)) * T^2)"},
    **{name: {None: "kd.temperature (T in KL(softmax(t/T) || softmax(s/T)) * T^2)"}
       for name in ("temp", "tau", "temperature", "kd_temperature", "kd_temp")},
    **{name: {None: f"{_EMA_DECAY}; ema.student_decay for an EMA of the student's weights"}
       for name in ("decay", "ema_decay", "ema_alpha", "momentum_decay", "teacher_decay", "ema_momentum",
                    "ema_rate")},
    "momentum": {"ema": _EMA_DECAY},
    **{name: {None: "ema.student_decay (> 0: an EMA of the student's weights, reported apart)"}
       for name in ("student_ema", "student_ema_decay", "ema_student", "swa")},
    **{name: {None: "ema.warmup (mean-teacher warm-up: alpha_t = min(1 - 1/(t+1), alpha))"}
       for name in ("ema_warmup", "warm_up", "warmup")},
    **{name: {None: _LEARNING_RATE} for name in ("lr", "learning_rate", "learningrate", "base_lr", "eta", "step_size")},
    **{name: {None: "optimizer.weight_decay"} for name in ("wd", "weight_decay", "l2")},
    **{name: {None: "epochs (per phase)"} for name in ("epochs", "num_epochs", "n_epochs", "max_epochs")},
    **{name: {None: "batch_size (the global batch)"} for name in ("batch", "bs", "batch_size", "train_batch_size")},
}


def concept_pointer(field: str) -> str | None:
  """The field that does what the non-existent `field` names (kd.alpha -> kd.kd_weight and kd.ce_weight, ...),
  or None."""
  parts = field.lower().split(".")
  choices = CONCEPTS.get(parts[-1])
  if not choices:
    return None
  section = parts[0] if len(parts) > 1 else None
  return choices.get(section, choices.get(None))


def check_field(config: ml_collections.ConfigDict, field: str, where: str = "config",
                listing: str = "describe(config) lists them all") -> None:
  """ConfigError naming `field` and what to use instead (the field that does what a known KD/EMA name means,
  else the nearest real one) when the config has no such field."""
  names = field_names(config)
  if field in names:
    return
  pointer = concept_pointer(field)
  if pointer is not None:
    hint = f"; use {pointer}"
  else:
    near = difflib.get_close_matches(field, names, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]}?" if near else ""
  raise ConfigError(f"{where}.{field}: no such config field{hint} ({listing})")


def override(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets the dotted `field`; ConfigError for a field that does not exist or a value of the wrong type."""
  check_field(config, field)
  *parents, leaf = field.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  try:
    node[leaf] = value
  except TypeError:
    raise ConfigError(f"config.{field} must be of type {type(node[leaf]).__name__}, got {value!r}") from None


def get(name: str = "ema", **overrides) -> ml_collections.ConfigDict:
  """A config by name or path, with fields changed: `get("ema", epochs=2, kd={"temperature": 2.0})` or
  `get("ema", **{"kd.temperature": 2.0})`. The result is locked: setting a field that does not exist raises."""
  config = load(name)

  def apply(items, prefix):
    for key, value in items.items():
      if isinstance(value, dict):
        apply(value, f"{prefix}{key}.")
      else:
        override(config, prefix + key, value)
  apply(overrides, "")
  return config


def _field_comments() -> dict[str, str]:
  """Field -> what kdjax/config/defaults.py says of it: the comment beside its default (continued on the lines below
  at the same column) or, without one, the comment lines just above it. For --show_config."""
  try:
    lines = inspect.getsource(config_lib.default_config).splitlines()
  except (OSError, TypeError):
    return {}
  comments, above, last_field, last_column = {}, [], None, None
  for line in lines:
    field = re.match(r"^\s*config\.([\w.]+)\s*=[^#]*(#\s*(.*))?$", line)
    comment_only = re.match(r"^(\s*)#\s*(.*)$", line)
    if field:
      last_field, last_column = field[1], (line.index("#") if field[2] else None)
      comment = field[3] or " ".join(above)
      if comment:
        comments[last_field] = comment.strip()
      above = []
    elif comment_only and last_column is not None and len(comment_only[1]) == last_column:
      comments[last_field] += " " + comment_only[2].strip()
    elif comment_only:
      above.append(comment_only[2].strip())
      last_column = None
    else:
      above, last_column = [], None
  return comments


def describe(config: ml_collections.ConfigDict, source: str = "") -> str:
  """Every field of `config` with its value (and what it means, where config.py says), one a line."""
  comments = _field_comments()
  rows = []

  def walk(node, prefix):
    for key, value in sorted(node.items()):
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")
      else:
        rows.append((f"{prefix}{key} = {value!r}", comments.get(prefix + key)))
  walk(config, "")
  width = max((len(text) for text, comment in rows if comment), default=0)
  lines = [f"# {source}" if source else "# config", "# change a field with --config.FIELD=VALUE"]
  lines += [f"{text:<{width}}  # {comment}" if comment else text for text, comment in rows]
  return "\n".join(lines)


def _flag_values(argv: list[str], flag: str):
  """(index of the value, the value) of each `--FLAG X` / `--FLAG=X` in argv (None for a value that is missing)."""
  for index, arg in enumerate(argv):
    match = re.match(rf"^--?{re.escape(flag)}(=(.*))?$", arg)
    if match and match[1] is not None:
      yield index, match[2]
    elif match:
      yield index + 1, (argv[index + 1] if index + 1 < len(argv) else None)


def given(argv: list[str], flag: str = "config") -> str | None:
  """The value of --FLAG in argv (the last one), else None."""
  values = [value for _, value in _flag_values(argv, flag)]
  return values[-1] if values else None


def resolve_flag(argv: list[str], flag: str = "config") -> list[str]:
  """argv with the value of --FLAG (`--config X` or `--config=X`) replaced by the config file's absolute path
  (and its `:ARG`), for a command line that loads it with ml_collections' DEFINE_config_file. ConfigError
  when the value names no config."""
  resolved = list(argv)
  for index, value in _flag_values(argv, flag):
    if value is None:
      raise ConfigError(f"--{flag} needs a value: a config file or one of {', '.join(available())}")
    file_value, argument = split_argument(value)
    resolved_value = str(path(file_value)) + ("" if argument is None else f":{argument}")
    resolved[index] = resolved_value if argv[index] == value else f"--{flag}={resolved_value}"
  return resolved


def overridden_fields(argv: list[str], flag: str = "config") -> list[str]:
  """The dotted fields that `--FLAG.FIELD=VALUE` (or `--noFLAG.FIELD`, `--FLAG.FIELD VALUE`) set in argv."""
  fields = []
  for arg in argv:
    match = re.match(rf"^--?(?:no)?{re.escape(flag)}\.([^=]+)", arg)
    if match:
      fields.append(match[1])
  return fields

