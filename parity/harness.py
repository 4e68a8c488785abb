"""Runs a phase of the study in both frameworks from the same initial weights, on the same batches in the same
order, and collects what the checks compare: per-step losses, per-epoch validation, final params and logits.

The JAX side is kdjax's own public pieces (models, train.make_train_step, optim.make_optimizer, ema.torch_zip_pairs,
data.epoch_order/batch_indices/normalize, evaluate.predict); the PyTorch side is parity.reference. PyTorch gets
data.normalize's own table lookup, only transposed, so both see bit-identical inputs.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from kdjax import progress
from kdjax.config import validation as config_validation
from kdjax import data as data_lib
from kdjax.training import evaluate
from kdjax.training import optim
from kdjax import phases as phases_lib
from kdjax.study import builder as setup_lib
from kdjax.training import train
from kdjax.training import jit_step
from parity import convert
from parity import mirror
from parity import precision
from parity import reference

# phase -> (net, step kind), as the study runs them: kdjax's own table (kdjax/phases.py).
PHASES = {name: (phase.net, phase.step_kind) for name, phase in phases_lib.PHASES.items()}
TEACHER_EMA = phases_lib.TEACHER_EMA
EMA_WEIGHTS = phases_lib.EMA_WEIGHTS_SUFFIX
DTYPES = ("float32", "float64")


@dataclasses.dataclass
class ParitySetup:
  """The data, both nets of both frameworks' shapes, and the shared initial weights of one config."""

  config: object
  dataset: data_lib.Dataset
  mean: np.ndarray
  std: np.ndarray
  nets: dict
  initial_params: dict
  dtype: str = "float32"
  torch_device: torch.device = torch.device("cpu")
  study: setup_lib.Setup | None = None   # the study's own Setup: kdjax's step comes from it

  @property
  def image_size(self) -> int:
    return self.dataset.image_shape[0]

  @property
  def torch_dtype(self) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

  def images(self, split: str, mirrored: bool = False) -> np.ndarray:
    """uint8 NHWC images of a split, or of the mirrored problem (parity/mirror.py)."""
    images = self.dataset.split(split)[0]
    return mirror.mirror_images(images) if mirrored else images

  def torch_net(self, role: str, params) -> torch.nn.Module:
    """`role`'s reference net in the run's dtype on the torch device, holding the (Flax-layout) params."""
    net = reference.NETS[role](self.dataset.num_classes, self.image_size, self.config.model.activation)
    return convert.load_into(net.to(self.torch_dtype), params).to(self.torch_device)

  def torch_inputs(self, split: str, mirrored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole split as PyTorch sees it: NCHW, exactly kdjax's model inputs (data.normalize's lookup) in the
    run's dtype; int64 labels; on the torch device."""
    inputs = model_inputs(self.images(split, mirrored), self.mean, self.std, self.dtype)
    labels = self.dataset.split(split)[1]
    return (torch.from_numpy(np.ascontiguousarray(np.transpose(inputs, (0, 3, 1, 2)))).to(self.torch_device),
            torch.from_numpy(labels.astype(np.int64)).to(self.torch_device))

  def predict(self, role: str, params, mirrored: bool = False) -> np.ndarray:
    """kdjax's validation logits (evaluate.predict) of `role`'s net with `params` (of the mirrored problem when
    `mirrored`: then on the mirrored images, giving the same logits in the same order)."""
    with jax.enable_x64(self.dtype == "float64"):
      return evaluate.predict(self.nets[role], params, self.images("validation", mirrored), self.mean, self.std,
                              self.config.eval_batch_size)


def model_inputs(images: np.ndarray, mean, std, dtype: str = "float32") -> np.ndarray:
  """NHWC: exactly what kdjax's models see for these uint8 images, data.normalize's table lookup (float32), then
  cast to `dtype` (exact: float64 holds every float32). The lookup has no arithmetic, so the values are the same
  bits as inside kdjax's jitted step and evaluation, whatever XLA fuses there."""
  return np.asarray(data_lib.normalize(images, mean, std)).astype(dtype)


def make_setup(config, dtype: str = "float32", dataset: data_lib.Dataset | None = None) -> ParitySetup:
  """dtype "float64" runs both frameworks in double precision (parameters, activations, optimizer state), where
  rounding is ~1e-16 and only a semantic difference can be seen. Both dtypes start from the same weights (kdjax's
  float32 initialisation, exactly representable in float64). `dataset`: an already loaded data.load(config.data).
  JAX's 64-bit mode is switched on only around this setup's own JAX work (jax.enable_x64), never globally."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  config_validation.validate(config)
  study = setup_lib.Setup.build(config, dataset)   # the study's own data, nets and initial weights
  initial = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(dtype), study.initial_params)
  return ParitySetup(config, study.dataset, np.asarray(study.mean), np.asarray(study.std), study.nets, initial,
                     dtype, precision.torch_device(), study)


def epoch_batches(setup: ParitySetup, epochs: int) -> list[list[np.ndarray]]:
  """The study's batches: index arrays per epoch, from data.epoch_order (seed, epoch)."""
  config, count = setup.config, len(setup.dataset.train_labels)
  return [data_lib.batch_indices(data_lib.epoch_order(count, config.seed, epoch), config.batch_size,
                                 config.data.drop_remainder) for epoch in range(1, epochs + 1)]


def first_steps(setup: ParitySetup, steps: int) -> list[list[np.ndarray]]:
  """The first `steps` batches of the study's order (running into later epochs if needed), as one 'epoch'."""
  batches, epoch = [], 0
  while len(batches) < steps:
    epoch += 1
    batches += epoch_batches(setup, epoch)[-1]
  return [batches[:steps]]


class Steps:
  """What one side of a phase is doing, said as it starts (`LABEL: N steps...`), then `LABEL: step i/N (t s)` at
  most every `every` seconds: a float64 phase runs for minutes. Through the kdjax logger (progress.say): the
  parity.check command prints them, a caller of check() sees them at INFO."""

  EVERY = 15.0

  def __init__(self, label: str, total: int, every: float | None = None, clock=time.monotonic):
    self.label, self.total, self.clock = label, total, clock
    self.every = self.EVERY if every is None else every
    self.done = 0
    self.start = self.last = clock()
    progress.say(f"{label}: {total} steps...")

  def tick(self) -> None:
    self.done += 1
    now = self.clock()
    if now - self.last >= self.every and self.done < self.total:
      self.last = now
      progress.say(f"{self.label}: step {self.done}/{self.total} ({now - self.start:.0f} s)")


class _Counted(list):
  """A list of batches that ticks `steps` after each one is used (the reference loop asks for the next batch once
  the step on the last one is done)."""

  def __init__(self, items, steps: Steps):
    super().__init__(items)
    self.steps = steps

  def __iter__(self):
    for item in super().__iter__():
      yield item
      self.steps.tick()


def _label(setup: "ParitySetup", phase: str, framework: str, mirrored: bool) -> str:
  return f"  {setup.dtype} {phase}, {framework}{' (mirrored problem)' if mirrored else ''}"


@dataclasses.dataclass
class Side:
  """One framework's run of a phase (of the mirrored problem, mapped back: parity/mirror.py)."""

  step_losses: list            # per epoch, per step
  val_correct: list            # per epoch, of the phase's model
  params: dict                 # tracked model -> final params (Flax layout, numpy)
  val_logits: dict             # tracked model -> final validation logits [N, K]
  initial_logits: np.ndarray   # the phase's model's validation logits at the start weights

  @property
  def train_losses(self) -> list[float]:
    return [float(np.mean(losses)) for losses in self.step_losses]

  @property
  def losses(self) -> np.ndarray:
    """Every step's loss, in order (float64)."""
    return np.array([loss for epoch in self.step_losses for loss in epoch], np.float64)


@dataclasses.dataclass
class PhaseRun:
  """A phase in both frameworks; with floors (run_phase(floors=True)), each framework also on the mirrored problem:
  what each framework's own rounding does to the same run (parity/mirror.py, parity/tolerances.py)."""

  phase: str
  net: str
  kind: str
  jax: Side
  torch: Side
  jax_mirror: Side | None = None
  torch_mirror: Side | None = None
  dtype: str = "float32"
  start: dict = dataclasses.field(default_factory=dict)  # tracked model -> its params before the phase
  reference: "PhaseRun | None" = None  # float32: the float64 run of the same phase, start and teacher

  @property
  def models(self) -> list[str]:
    return list(self.jax.params)

  @property
  def has_floors(self) -> bool:
    return self.jax_mirror is not None and self.torch_mirror is not None

  @property
  def initial_logits_delta(self) -> float:
    """max |Δ logits| of the two frameworks on validation, same (initial) weights."""
    return float(np.max(np.abs(self.jax.initial_logits - self.torch.initial_logits)))


def loop_options(config, student_decay: float) -> reference.LoopOptions:
  return reference.LoopOptions(temperature=float(config.kd.temperature), kd_weight=float(config.kd.kd_weight),
                               ce_weight=float(config.kd.ce_weight), teacher_decay=float(config.ema.decay),
                               student_decay=float(student_decay), warmup=bool(config.ema.warmup))


def role_of(model: str, net: str) -> str:
  return "teacher" if model == TEACHER_EMA else net


def _tracked(phase: str, kind: str, student_decay: float, student, teacher=None, student_ema=None) -> dict:
  """tracked model name -> that framework's object for it: the phase's model, the EMA-updated teacher (kd_ema),
  the student-weights average (student_decay > 0)."""
  tracked = {phase: student}
  if kind == "kd_ema":
    tracked[TEACHER_EMA] = teacher
  if student_decay:
    tracked[phase + EMA_WEIGHTS] = student_ema
  return tracked


def jax_step(setup: "ParitySetup", phase: str, total_steps: int, start_params, teacher_params=None,
             student_decay: float = 0.0) -> tuple:
  """(optimizer, jitted step) of kdjax for `phase`: make_optimizer and the study's own step (Setup.step_function,
  with the teacher inline as the seed computes it; the cached-logit KD step equals it bit for bit:
  tests/training/test_train.py). Jitted as the study jits it (training/jit_step.py: speed.xla_cpu_options), so
  that parity is the study's own program, except that the state is not donated: the checks' injected optimizers
  may hand one buffer to two state leaves (a stand-in Adam's mu and nu), which donation refuses, and donating
  changes no number. The mirrored run reuses them (same shapes, same pairs), so a phase compiles once."""
  optimizer = optim.make_optimizer(optim.OptimizerConfig(**setup.config.optimizer), total_steps)
  step = setup.study.step_function(phase, optimizer, student_decay=student_decay, inline_teacher=True)
  return optimizer, jit_step.jit_step(step, setup.config.speed.xla_cpu_options, donate=False)


def jax_side(setup: ParitySetup, phase: str, batches, start_params, teacher_params=None, student_decay: float = 0.0,
             mirrored: bool = False, step: tuple | None = None) -> Side:
  """kdjax's run of `phase`: its own step function, optimizer, EMA pairing and evaluation. mirrored: on the
  mirrored problem with each batch reversed (results mapped back). step: a jax_step(...) of the same phase."""
  net, kind = PHASES[phase]
  optimizer, step_fn = step or jax_step(setup, phase, sum(len(epoch) for epoch in batches), start_params,
                                        teacher_params, student_decay)
  if mirrored:
    start_params, batches = mirror.mirror_params(start_params), mirror.mirror_batches(batches)
    teacher_params = None if teacher_params is None else mirror.mirror_params(teacher_params)
  with jax.enable_x64(setup.dtype == "float64"):
    state = train.create_state(start_params, optimizer, teacher_params=teacher_params if kind != "ce" else None,
                               keep_student_ema=bool(student_decay))
    initial_logits = setup.predict(net, start_params, mirrored)
    train_images = jax.device_put(setup.images("train", mirrored))
    train_labels = jax.device_put(setup.dataset.train_labels.astype(np.int32))
    val_labels = setup.dataset.val_labels
    step_losses, val_correct = [], []
    steps = Steps(_label(setup, phase, "kdjax (its first step compiles)", mirrored),
                  sum(len(epoch) for epoch in batches))
    for epoch in batches:
      losses = []
      for indices in epoch:
        indices = jnp.asarray(indices)
        state, metrics = step_fn(state, {"image": train_images[indices], "label": train_labels[indices]})
        losses.append(jax.block_until_ready(metrics["loss"]))   # done, for the step counter
        steps.tick()
      step_losses.append([float(loss) for loss in losses])
      val_correct.append(int((setup.predict(net, state.params, mirrored).argmax(-1) == val_labels).sum()))
    params = _tracked(phase, kind, student_decay, state.params, state.teacher_params, state.ema_params)
    params = {name: convert.to_numpy_tree(tree) for name, tree in params.items()}
    val_logits = {name: setup.predict(role_of(name, net), tree, mirrored) for name, tree in params.items()}
  if mirrored:
    params = {name: mirror.mirror_params(tree) for name, tree in params.items()}
  return Side(step_losses, val_correct, params, val_logits, initial_logits)


def torch_side(setup: ParitySetup, phase: str, batches, start_params, teacher_params=None, student_decay: float = 0.0,
               mirrored: bool = False) -> Side:
  """The original's PyTorch loop for `phase` (parity.reference), from the same weights on the same batches."""
  net, kind = PHASES[phase]
  config = setup.config
  if mirrored:
    start_params, batches = mirror.mirror_params(start_params), mirror.mirror_batches(batches)
    teacher_params = None if teacher_params is None else mirror.mirror_params(teacher_params)
  val_x, val_y = setup.torch_inputs("validation", mirrored)
  train_x, train_y = setup.torch_inputs("train", mirrored)
  model = setup.torch_net(net, start_params)
  initial_logits = reference.predict(model, val_x).cpu().numpy()
  torch_optimizer, scheduler = reference.make_optimizer(model.parameters(), config.optimizer,
                                                        sum(len(epoch) for epoch in batches))
  student_ema = reference.StudentWeightsEMA(model) if student_decay else None
  steps = Steps(_label(setup, phase, "PyTorch", mirrored), sum(len(epoch) for epoch in batches))
  torch_epochs = [_Counted([(train_x[torch.from_numpy(idx).to(setup.torch_device)],
                             train_y[torch.from_numpy(idx).to(setup.torch_device)]) for idx in epoch], steps)
                  for epoch in batches]
  common = dict(validation=(val_x, val_y), scheduler=scheduler, options=loop_options(config, student_decay),
                student_ema=student_ema)
  teacher = None
  if kind == "ce":
    logs = reference.train_ce(model, torch_optimizer, torch_epochs, **common)
  else:
    teacher = setup.torch_net("teacher", teacher_params)
    loop = reference.train_kd if kind == "kd" else reference.train_kd_ema
    logs = loop(model, teacher, torch_optimizer, torch_epochs, **common)
  models_ = _tracked(phase, kind, student_decay, model, teacher, student_ema.module if student_ema else None)
  params = {name: convert.params_of(m) for name, m in models_.items()}
  if mirrored:
    params = {name: mirror.mirror_params(tree) for name, tree in params.items()}
  return Side([log.step_losses for log in logs], [log.val_correct for log in logs], params,
              {name: reference.predict(m, val_x).cpu().numpy() for name, m in models_.items()}, initial_logits)


def run_phase(setup: ParitySetup, phase: str, batches: list[list[np.ndarray]], teacher_params=None,
              student_decay: float = 0.0, floors: bool = False, torch_run: Side | None = None) -> PhaseRun:
  """Trains `phase` over `batches` (per epoch) in both frameworks, validating after every epoch.

  teacher_params: the (Flax) teacher the KD phases distil from, given to both frameworks.
  student_decay > 0 keeps the student-weights EMA (student phases only), tracked as "<phase> (EMA weights)".
  floors: also run each framework on the mirrored problem (parity/mirror.py): the float32 noise floor that the
  difference between the frameworks is reported against (parity/tolerances.py).
  torch_run: a torch_side(...) already computed for the same arguments, reused (tests that vary only kdjax).
  """
  net, kind = PHASES[phase]
  student_decay = student_decay if net == "student" else 0.0
  start_params = setup.initial_params[net]
  if kind != "ce" and teacher_params is None:
    raise ValueError(f"phase {phase} needs teacher_params")
  if teacher_params is not None:  # in the run's dtype (a float32 teacher is exact in float64)
    teacher_params = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(setup.dtype), teacher_params)
  args = (setup, phase, batches, start_params, teacher_params, student_decay)
  step = jax_step(setup, phase, sum(len(epoch) for epoch in batches), start_params, teacher_params, student_decay)
  sides = {"jax": jax_side(*args, step=step), "torch": torch_run or torch_side(*args)}
  if floors:
    sides.update(jax_mirror=jax_side(*args, mirrored=True, step=step), torch_mirror=torch_side(*args, mirrored=True))
  start = {name: teacher_params if name == TEACHER_EMA else start_params for name in sides["jax"].params}
  return PhaseRun(phase, net, kind, dtype=setup.dtype, start=jax.tree_util.tree_map(np.asarray, start), **sides)


def max_abs_diff(tree_a: dict, tree_b: dict) -> float:
  """max |a - b| over every tensor of two Flax-layout param trees (same structure required)."""
  if set(tree_a) != set(tree_b) or any(set(tree_a[k]) != set(tree_b[k]) for k in tree_a):
    raise ValueError("param trees differ in structure")
  return max(float(np.max(np.abs(tree_a[layer][name] - tree_b[layer][name])))
             for layer in tree_a for name in tree_a[layer])
