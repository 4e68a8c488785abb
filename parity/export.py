"""Exports a kdjax run for PyTorch: a model's weights as a state_dict, and a split's exact model inputs.

    python -m parity.export weights --workdir W --model NAME --out NAME.pt [--probe-out PROBE.npz --probe-count 64]
    python -m parity.export data    --workdir W --split validation --out VAL.npz

weights  reads the Orbax checkpoint of NAME (teacher, student_ce, student_kd, student_kd_ema, teacher_ema) in W
         and saves a state_dict with the original's keys, which TeacherNet/StudentNet(num_classes, image_size)
         .load_state_dict(..., strict=True) accepts (parity.reference). --probe-out also saves `x` (float32 NHWC,
         seeded N(0, 1) inputs of the model's input shape) and `logits` (what kdjax's Flax model computes on x).
data     saves `x` (float32 NHWC: exactly the preprocessed inputs kdjax's models see for that split of W's data
         set, in order) and `y` (int64 labels). Transpose x to NCHW for PyTorch (parity.convert.images_to_torch).

Errors (missing workdir, unknown model, missing checkpoint, unwritable output) are one line on stderr, exit 2.
"""

import pathlib
import sys

from absl import flags
import numpy as np

from kdjax.cli import exits as cli
from kdjax.cli import help as help_lib
from kdjax.phases import MODEL_ORDER

MODELS = MODEL_ORDER   # the models with a checkpoint folder, from kdjax's one table
SPLITS = ("train", "validation")
PROG = "parity.export"
PROBE_SEED = 0


class ExportError(cli.UsageError):
  """A bad argument or workdir; the message is one line naming the path or model (exit 2)."""


def net_of(model: str) -> str:
  from kdjax import phases
  return phases.model(model).net


def _run(workdir: str):
  """kdjax's own reading of a workdir (run_lib.load_run), its errors as ExportError."""
  from kdjax.store import checkpoints as ckpt_lib
  from kdjax.store import run as run_lib
  try:
    return run_lib.load_run(workdir)
  except ckpt_lib.CheckpointError as error:
    raise ExportError(str(error)) from None


def workdir_config(workdir: str):
  """W/config.json as a ConfigDict (the config the run was started with)."""
  return _run(workdir).config


def restore_params(workdir: str, model: str) -> dict:
  """The latest checkpoint's params of `model` in `workdir` (Flax layout, numpy), read and verified as kdjax
  reads them (run_lib.Run.params: its hashes checked; nothing created or deleted)."""
  from kdjax.store import checkpoints as ckpt_lib
  from parity import convert
  if model not in MODELS:
    raise ExportError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
  try:
    params, _, _ = _run(workdir).params(model)
  except ckpt_lib.CheckpointError as error:
    raise ExportError(str(error)) from None
  return convert.to_numpy_tree(params)


def _writable(out: str, suffix: str | None = None) -> pathlib.Path:
  """`out` as a file path to create or replace: not a directory; ending in `suffix` where numpy would
  otherwise write `out + suffix` beside it."""
  path = pathlib.Path(out)
  if path.is_dir():
    raise ExportError(f"cannot write {out}: it is a directory (give a file path, e.g. {path / 'out'}"
                      f"{suffix or '.pt'})")
  if suffix and not path.name.endswith(suffix):
    raise ExportError(f"--out {out} must end in {suffix} (numpy would write {out}{suffix} instead)")
  if not path.parent.is_dir():
    raise ExportError(f"cannot write {out}: directory {path.parent} does not exist")
  return path


def export_weights(workdir: str, model: str, out: str, probe_out: str | None = None,
                   probe_count: int = 64) -> dict:
  """Writes NAME.pt (and the probe); returns the state_dict."""
  import jax
  import torch
  from kdjax.nets import models
  from parity import convert
  from parity import reference

  config = workdir_config(workdir)
  out_path = _writable(out)
  probe_path = _writable(probe_out, ".npz") if probe_out else None
  if probe_count < 1:
    raise ExportError(f"--probe-count must be >= 1, got {probe_count}")
  params = restore_params(workdir, model)
  net = net_of(model)
  num_classes = int(params["fc"]["bias"].shape[0])
  image_size = int(config.data.image_size)
  activation = config.model.activation
  state_dict = convert.to_state_dict(params)
  # The same call a user makes: it must accept the file strictly.
  reference.NETS[net](num_classes, image_size, activation).load_state_dict(state_dict, strict=True)
  try:
    torch.save(state_dict, out_path)
    if probe_path is not None:
      jax.config.update("jax_default_matmul_precision", "highest")
      flax_model = models.MODEL_FACTORIES[net](num_classes, activation)
      channels = int(params["conv1"]["kernel"].shape[2])
      x = np.random.default_rng(PROBE_SEED).standard_normal(
          (probe_count, image_size, image_size, channels)).astype(np.float32)
      logits = np.asarray(flax_model.apply({"params": params}, x))
      np.savez(probe_path, x=x, logits=logits)
  except OSError as error:
    raise ExportError(f"cannot write {error.filename or out}: {error.strerror or error}") from None
  return state_dict


def export_data(workdir: str, split: str, out: str) -> tuple[np.ndarray, np.ndarray]:
  """Writes VAL.npz with x (kdjax's exact float32 NHWC model inputs) and y; returns (x, y)."""
  from kdjax import data as data_lib
  from parity import harness

  config = workdir_config(workdir)
  if split not in SPLITS:
    raise ExportError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  out_path = _writable(out, ".npz")
  dataset = data_lib.load(config.data)
  mean, std = data_lib.normalization_constants(dataset, config.data.normalization)
  images, labels = dataset.split(split)
  x = harness.model_inputs(images, mean, std)
  y = labels.astype(np.int64)
  try:
    np.savez(out_path, x=x, y=y)
  except OSError as error:
    raise ExportError(f"cannot write {out}: {error.strerror or error}") from None
  return x, y


EXAMPLES = [
    "python -m kdjax.main --config ema.py --workdir runs/ema",
    "python -m parity.export weights --workdir runs/ema --model student_kd --out student_kd.pt",
    "python -m parity.export data --workdir runs/ema --split validation --out val.npz",
]
# Each command's flags (absl: one FlagValues holds both commands'; a flag of the other command is refused).
COMMANDS = {"weights": ("workdir", "model", "out", "probe-out", "probe-count"),
            "data": ("workdir", "split", "out")}
REQUIRED = {"weights": ("workdir", "model", "out"), "data": ("workdir", "out")}
FLAG_NAMES = ("workdir", "model", "out", "probe-out", "probe-count", "split")


def define_flags(values) -> None:
  """Both commands' flags, in `values` (kdjax.cli.exits.flag_values)."""
  flags.DEFINE_string("workdir", None, "weights, data: a kdjax run's folder (kdjax.main --workdir).",
                      flag_values=values)
  flags.DEFINE_string("model", None, f"weights: the model, one of {', '.join(MODELS)}.", flag_values=values)
  flags.DEFINE_string("out", None, "weights: NAME.pt; data: VAL.npz.", flag_values=values)
  flags.DEFINE_string("probe-out", None, "weights: PROBE.npz: seeded inputs x and Flax logits.", flag_values=values)
  flags.DEFINE_integer("probe-count", 64, "weights: the probe's examples.", flag_values=values)
  flags.DEFINE_string("split", "validation", f"data: {', '.join(SPLITS)}.", flag_values=values)


def parse(argv: list[str]) -> tuple[str, flags.FlagValues]:
  """(command, its parsed flags) of `argv` (the program first); --help/--helpfull answered first, a mistake one
  line and exit 2 (kdjax.cli.exits)."""
  values = cli.flag_values(define_flags)
  help_lib.answer(argv, __doc__, FLAG_NAMES, EXAMPLES, values)
  rest = cli.parse_flags(PROG, argv, config_flag=None, values=values)
  usage = f"usage: python -m {PROG} {{{'|'.join(COMMANDS)}}} --workdir W --out OUT ... (see --help)"
  if len(rest) != 2 or rest[1] not in COMMANDS:
    cli.usage_error(PROG, f"expected one command, weights or data, got {' '.join(rest[1:]) or 'none'}: {usage}")
  command = rest[1]
  foreign = [f"--{name}" for name in FLAG_NAMES if values[name].present and name not in COMMANDS[command]]
  if foreign:
    cli.usage_error(PROG, f"{', '.join(foreign)} is not a flag of {command} (its flags: "
                          f"{', '.join(f'--{name}' for name in COMMANDS[command])})")
  missing = [f"--{name}" for name in REQUIRED[command] if values[name].value is None]
  if missing:
    cli.usage_error(PROG, f"{command} needs {', '.join(missing)}: {usage}")
  return command, values


def main(argv=None) -> int:
  """`python -m parity.export {weights|data} ...`; argv without the program (default: sys.argv[1:]). Returns the
  exit code (kdjax.cli.exits): 0, or 2 for what the user gave (a workdir, model, split or output path)."""
  command, values = parse([f"python -m {PROG}", *(sys.argv[1:] if argv is None else argv)])

  def body() -> None:
    if command == "weights":
      export_weights(values.workdir, values.model, values.out, values["probe-out"].value,
                     values["probe-count"].value)
    else:
      export_data(values.workdir, values.split, values.out)
  return cli.run_main(PROG, body, resumable=False)


if __name__ == "__main__":
  sys.exit(main())
