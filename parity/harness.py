"""Runs a phase of the study in both frameworks from the same initial weights, on the same batches in the same
order, and collects what the checks compare: per-step losses, per-epoch validation, final params and logits.

The JAX side is kdjax's own public pieces (models, train.make_train_step, optim.make_optimizer, ema.seed_pairs,
data.epoch_order/batch_indices/normalize, evaluate.predict); the PyTorch side is parity.reference. PyTorch gets
data.normalize's own table lookup, only transposed, so both see bit-identical inputs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

from kdjax import config as config_lib
from kdjax import data as data_lib
from kdjax import ema
from kdjax import evaluate
from kdjax import models
from kdjax import optim
from kdjax import train
from parity import convert
from parity import reference

# phase -> (net, step kind), as the study runs them (kdjax README).
PHASES = {
    "teacher": ("teacher", "ce"),
    "student_ce": ("student", "ce"),
    "student_kd": ("student", "kd"),
    "student_kd_ema": ("student", "kd_ema"),
}
TEACHER_EMA = "teacher_ema"
EMA_WEIGHTS = " (EMA weights)"


def set_precision() -> None:
  """fp32 everywhere: JAX would use TF32/bf16 passes for convs and matmuls on GPU/TPU by default."""
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False


@dataclasses.dataclass
class Setup:
  """The data, both nets of both frameworks' shapes, and the shared initial weights of one config."""

  config: object
  dataset: data_lib.Dataset
  mean: np.ndarray
  std: np.ndarray
  nets: dict
  initial_params: dict
  dtype: str = "float32"

  @property
  def image_size(self) -> int:
    return self.dataset.image_shape[0]

  @property
  def torch_dtype(self) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

  def torch_net(self, role: str) -> torch.nn.Module:
    net = reference.NETS[role](self.dataset.num_classes, self.image_size, self.config.model.activation)
    return net.to(self.torch_dtype)

  def torch_inputs(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as PyTorch sees it: NCHW, exactly kdjax's (float32) model inputs; int64 labels."""
    images, labels = self.dataset.split(split)
    inputs = model_inputs(images, self.mean, self.std, self.dtype)
    return (torch.from_numpy(np.ascontiguousarray(np.transpose(inputs, (0, 3, 1, 2)))),
            torch.from_numpy(labels.astype(np.int64)))

  def predict(self, role: str, params) -> np.ndarray:
    """kdjax's validation logits (evaluate.predict) of `role`'s net with `params`."""
    images = self.dataset.val_images
    return evaluate.predict(self.nets[role], params, images, self.mean, self.std, self.config.eval_batch_size)


def model_inputs(images: np.ndarray, mean, std, dtype: str = "float32") -> np.ndarray:
  """NHWC: exactly what kdjax's models see for these uint8 images, data.normalize's table lookup (float32), then
  cast to `dtype` (exact: float64 holds every float32). The lookup has no arithmetic, so the values are the same
  bits as inside kdjax's jitted step and evaluation, whatever XLA fuses there."""
  return np.asarray(data_lib.normalize(images, mean, std)).astype(dtype)


def make_setup(config, dtype: str = "float32", dataset: data_lib.Dataset | None = None) -> Setup:
  """dtype "float64" runs both frameworks in double precision (parameters, activations, optimizer state), which
  shows how much of a difference is fp32 rounding. `dataset`: an already loaded data.load(config.data)."""
  if dtype not in ("float32", "float64"):
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
  if dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  config_lib.validate(config)
  dataset = dataset or data_lib.load(config.data)
  mean, std = data_lib.normalization_constants(dataset, config.data.normalization)
  nets = {role: factory(dataset.num_classes, config.model.activation, config.model.init)
          for role, factory in models.MODEL_FACTORIES.items()}
  teacher_key, student_key = jax.random.split(jax.random.PRNGKey(config.seed))
  initial = {"teacher": models.init_params(nets["teacher"], teacher_key, dataset.image_shape),
             "student": models.init_params(nets["student"], student_key, dataset.image_shape)}
  initial = jax.tree_util.tree_map(lambda a: np.asarray(a, dtype), initial)
  return Setup(config, dataset, mean, std, nets, initial, dtype)


def epoch_batches(setup: Setup, epochs: int) -> list[list[np.ndarray]]:
  """The study's batches: index arrays per epoch, from data.epoch_order (seed, epoch)."""
  config, count = setup.config, len(setup.dataset.train_labels)
  return [data_lib.batch_indices(data_lib.epoch_order(count, config.seed, epoch), config.batch_size,
                                 config.data.drop_remainder) for epoch in range(1, epochs + 1)]


def first_steps(setup: Setup, steps: int) -> list[list[np.ndarray]]:
  """The first `steps` batches of the study's order (running into later epochs if needed), as one 'epoch'."""
  batches, epoch = [], 0
  while len(batches) < steps:
    epoch += 1
    batches += epoch_batches(setup, epoch)[-1]
  return [batches[:steps]]


@dataclasses.dataclass
class Side:
  """One framework's run of a phase."""

  step_losses: list            # per epoch, per step
  val_correct: list            # per epoch, of the phase's model
  params: dict                 # tracked model -> final params (Flax layout, numpy)
  val_logits: dict             # tracked model -> final validation logits [N, K]

  @property
  def train_losses(self) -> list[float]:
    return [float(np.mean(losses)) for losses in self.step_losses]


@dataclasses.dataclass
class PhaseRun:
  phase: str
  net: str
  kind: str
  initial_logits_delta: float  # max |logit diff| on validation, same (initial) weights
  jax: Side
  torch: Side
  twin: Side | None = None     # kdjax with other roundings (run_phase(twin=True))
  dtype: str = "float32"
  start: dict = dataclasses.field(default_factory=dict)  # tracked model -> its params before the phase

  @property
  def models(self) -> list[str]:
    return list(self.jax.params)


def step_config(config, kind: str, student_decay: float) -> train.StepConfig:
  return train.StepConfig(kind=kind, temperature=float(config.kd.temperature),
                          kd_weight=float(config.kd.kd_weight), ce_weight=float(config.kd.ce_weight),
                          teacher_decay=float(config.ema.decay), student_decay=float(student_decay),
                          warmup=bool(config.ema.warmup))


def loop_options(config, student_decay: float) -> reference.LoopOptions:
  return reference.LoopOptions(temperature=float(config.kd.temperature), kd_weight=float(config.kd.kd_weight),
                               ce_weight=float(config.kd.ce_weight), teacher_decay=float(config.ema.decay),
                               student_decay=float(student_decay), warmup=bool(config.ema.warmup))


def _jax_side(setup: Setup, phase: str, batches, start_params, teacher_params, student_decay: float) -> "Side":
  """kdjax's run of `phase`: its own step function, optimizer, EMA pairing and evaluation."""
  net, kind = PHASES[phase]
  config = setup.config
  optimizer = optim.make_optimizer(config.optimizer, sum(len(epoch) for epoch in batches))
  pairs = ()
  if kind == "kd_ema":
    pairs = ema.seed_pairs(start_params, setup.nets["student"].layer_names, teacher_params,
                           setup.nets["teacher"].layer_names)
  step_fn = jax.jit(train.make_train_step(step_config(config, kind, student_decay), setup.nets[net], optimizer,
                                          jnp.asarray(setup.mean), jnp.asarray(setup.std),
                                          teacher=setup.nets["teacher"] if kind != "ce" else None,
                                          teacher_pairs=pairs))
  state = train.create_state(start_params, optimizer, teacher_params=teacher_params if kind != "ce" else None,
                             keep_student_ema=bool(student_decay))
  train_images = jax.device_put(setup.dataset.train_images)
  train_labels = jax.device_put(setup.dataset.train_labels.astype(np.int32))
  val_images, val_labels = setup.dataset.split("validation")
  step_losses, val_correct = [], []
  for epoch in batches:
    losses = []
    for indices in epoch:
      indices = jnp.asarray(indices)
      state, metrics = step_fn(state, {"image": train_images[indices], "label": train_labels[indices]})
      losses.append(metrics["loss"])
    step_losses.append([float(loss) for loss in losses])
    val_correct.append(int((setup.predict(net, state.params).argmax(-1) == val_labels).sum()))
  params = {phase: state.params}
  if kind == "kd_ema":
    params[TEACHER_EMA] = state.teacher_params
  if student_decay:
    params[phase + EMA_WEIGHTS] = state.ema_params
  params = {name: convert.to_numpy_tree(tree) for name, tree in params.items()}
  return Side(step_losses, val_correct, params,
              {name: setup.predict(role_of(name, net), tree) for name, tree in params.items()})


def role_of(model: str, net: str) -> str:
  return "teacher" if model == TEACHER_EMA else net


def next_representable(params):
  """Every parameter moved by one ulp (toward +inf): a start as close as the dtype allows."""
  return jax.tree_util.tree_map(lambda a: np.nextafter(a, np.asarray(np.inf, a.dtype)), params)


def run_phase(setup: Setup, phase: str, batches: list[list[np.ndarray]], teacher_params=None,
              student_decay: float = 0.0, twin: bool = False) -> PhaseRun:
  """Trains `phase` over `batches` (per epoch) in both frameworks, validating after every epoch.

  teacher_params: the (Flax) teacher the KD phases distil from, given to both frameworks.
  student_decay > 0 keeps the student-weights EMA (student phases only), tracked as "<phase> (EMA weights)".
  twin: also run kdjax from the start weights moved by one ulp, on each batch reversed: how far rounding alone
  carries the trajectory (the noise floor that a framework difference is measured against, parity/tolerances.py).
  """
  net, kind = PHASES[phase]
  config = setup.config
  student_decay = student_decay if net == "student" else 0.0
  total_steps = sum(len(epoch) for epoch in batches)
  start_params = setup.initial_params[net]
  if kind != "ce" and teacher_params is None:
    raise ValueError(f"phase {phase} needs teacher_params")
  jax_side = _jax_side(setup, phase, batches, start_params, teacher_params, student_decay)
  twin_side = None
  if twin:
    # The same computation with other roundings: start one ulp away, and each batch in reverse order (the batch
    # mean and the weight gradients' batch sums then add in another order, at every step).
    reversed_batches = [[indices[::-1] for indices in epoch] for epoch in batches]
    twin_side = _jax_side(setup, phase, reversed_batches, next_representable(start_params), teacher_params,
                          student_decay)

  # ---- PyTorch (the seed's loops)
  val_x, val_y = setup.torch_inputs("validation")
  train_x, train_y = setup.torch_inputs("train")
  model = convert.load_into(setup.torch_net(net), start_params)
  initial_delta = float(np.max(np.abs(reference.predict(model, val_x).numpy() - setup.predict(net, start_params))))
  torch_optimizer, scheduler = reference.make_optimizer(model.parameters(), config.optimizer, total_steps)
  student_ema = reference.StudentWeightsEMA(model) if student_decay else None
  torch_epochs = [[(train_x[idx], train_y[idx]) for idx in epoch] for epoch in batches]
  common = dict(validation=(val_x, val_y), scheduler=scheduler, options=loop_options(config, student_decay),
                student_ema=student_ema)
  torch_teacher = None
  if kind == "ce":
    logs = reference.train_ce(model, torch_optimizer, torch_epochs, **common)
  else:
    torch_teacher = convert.load_into(setup.torch_net("teacher"), teacher_params)
    loop = reference.train_kd if kind == "kd" else reference.train_kd_ema
    logs = loop(model, torch_teacher, torch_optimizer, torch_epochs, **common)
  torch_models = {phase: model}
  if kind == "kd_ema":
    torch_models[TEACHER_EMA] = torch_teacher
  if student_decay:
    torch_models[phase + EMA_WEIGHTS] = student_ema.module
  torch_side = Side([log.step_losses for log in logs], [log.val_correct for log in logs],
                    {name: convert.params_of(m) for name, m in torch_models.items()},
                    {name: reference.predict(m, val_x).numpy() for name, m in torch_models.items()})
  start = {name: teacher_params if name == TEACHER_EMA else start_params for name in jax_side.params}
  return PhaseRun(phase, net, kind, initial_delta, jax_side, torch_side, twin=twin_side,
                  start=jax.tree_util.tree_map(np.asarray, start), dtype=setup.dtype)


def max_abs_diff(tree_a: dict, tree_b: dict) -> float:
  """max |a - b| over every tensor of two Flax-layout param trees (same structure required)."""
  if set(tree_a) != set(tree_b) or any(set(tree_a[k]) != set(tree_b[k]) for k in tree_a):
    raise ValueError("param trees differ in structure")
  return max(float(np.max(np.abs(tree_a[layer][name] - tree_b[layer][name])))
             for layer in tree_a for name in tree_a[layer])


def max_abs(tree: dict) -> float:
  return max(float(np.max(np.abs(value))) for tensors in tree.values() for value in tensors.values())
