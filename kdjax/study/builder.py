"""What a study builds once from its config and never changes: the data, the nets, the initial weights.

`Setup.build(config)` loads the data set and initialises both nets; the dataclass itself does no I/O, so a test,
the parity harness or the benchmark can make one from parts. Every phase, the parity harness and the
benchmark take their nets, initial weights, normalisation constants, optimizer and step from a Setup, so the
study has one way to build each:

  initial_params = {"teacher": init(teacher, k_t), "student": init(student, k_s)},  (k_t, k_s) = split(PRNGKey(seed))
  steps_per_epoch = ceil(train_examples / batch_size)   (floor with data.drop_remainder)
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import nets as config_nets
from kdjax import data as data_lib
from kdjax.training import ema
from kdjax.training import evaluate
from kdjax.training import jit_step
from kdjax.training import mesh as mesh_lib
from kdjax.nets import models
from kdjax.training import optim
from kdjax import phases
from kdjax.report import sweep
from kdjax.training import train
from kdjax.training import xla


def step_config(config, kind: str, student_decay: float | None = None,
                phase: phases.Phase | None = None) -> train.StepConfig:
  """The StepConfig of a step `kind` from the study's config (student_decay: override ema.student_decay;
  phase: an EMA-sweep variant's own alpha and warm-up)."""
  decay = config.ema.student_decay if student_decay is None else student_decay
  teacher_decay = config.ema.decay if phase is None or phase.teacher_decay is None else phase.teacher_decay
  warmup = config.ema.warmup if phase is None or phase.warmup is None else phase.warmup
  return train.StepConfig(kind=kind, temperature=float(config.kd.temperature),
                          kd_weight=float(config.kd.kd_weight), ce_weight=float(config.kd.ce_weight),
                          teacher_decay=float(teacher_decay), student_decay=float(decay),
                          warmup=bool(warmup),
                          cached_teacher_logits=kind == "kd" and bool(config.speed.cached_teacher_logits))


def data_parallel(config) -> mesh_lib.DataParallel:
  """The study's data-parallel layout (training/mesh.py) from config.mesh.num_devices and its batch sizes."""
  return mesh_lib.data_parallel(config.mesh.num_devices, config.batch_size, config.eval_batch_size)


def sweep_phases(config) -> list[phases.Phase]:
  """The student_kd_ema variants of config.ema.sweep x config.ema.sweep_warmup (phases.sweep_phases), less the one
  student_kd_ema already is when config.phases holds it."""
  plain = (float(config.ema.decay), bool(config.ema.warmup)) if "student_kd_ema" in config.phases else None
  return phases.sweep_phases(config.ema.sweep, config.ema.sweep_warmup, plain)


def ema_sweep(config) -> sweep.Sweep:
  """The EMA sweep the report draws (report/sweep.py) from the study's config: config.ema.sweep's variants and the
  plain EMA phase's alpha and warm-up."""
  return sweep.Sweep(tuple(sweep_phases(config)), float(config.ema.decay), bool(config.ema.warmup))


class LoadedOnce:
  """data.load(data_config) at the first call, the same Dataset at every later one: the seeds and grid units one
  process runs share their data (a data set does not depend on the seed; its splits are read-only), so a
  several-seed run holds its images once, not once per seed on top of the last seed's high-water mark."""

  def __init__(self, data_config):
    self._data_config = data_config
    self._dataset: data_lib.Dataset | None = None

  def __call__(self) -> data_lib.Dataset:
    if self._dataset is None:
      self._dataset = data_lib.load(self._data_config)
    return self._dataset


@dataclasses.dataclass(frozen=True)
class Setup:
  """The frozen parts of one study. mean/std: float32 [C] on the device; train_*: the train split on the
  device (images uint8 [N, H, W, C], labels int32 [N]); nets and initial_params keyed "teacher"/"student".
  parallel: the data-parallel layout (kdjax/training/mesh.py); over several devices train_* stay in host memory and
  each batch is fed sharded, the states are replicated."""

  config: Any
  dataset: data_lib.Dataset
  mean: jax.Array
  std: jax.Array
  train_images: jax.Array
  train_labels: jax.Array
  nets: dict
  initial_params: dict
  steps_per_epoch: int
  parallel: mesh_lib.DataParallel = mesh_lib.DataParallel()

  @classmethod
  def build(cls, config, dataset: data_lib.Dataset | None = None) -> "Setup":
    """Loads config.data (unless `dataset` is given) and initialises both nets from config.seed."""
    parallel = data_parallel(config)
    dataset = dataset if dataset is not None else data_lib.load(config.data)
    mean, std = data_lib.normalization_constants(dataset, config.data.normalization)
    nets = {role: config_nets.from_config(role, dataset.num_classes, config) for role in models.MODEL_FACTORIES}
    teacher_key, student_key = jax.random.split(jax.random.PRNGKey(config.seed))
    initial_params = {"teacher": models.init_params(nets["teacher"], teacher_key, dataset.image_shape),
                      "student": models.init_params(nets["student"], student_key, dataset.image_shape)}
    steps = len(data_lib.batch_indices(np.arange(len(dataset.train_labels)), config.batch_size,
                                       config.data.drop_remainder))
    labels = dataset.train_labels.astype(np.int32)
    on_host = parallel.mesh is not None   # several devices: the host feeds each its rows (kdjax/training/mesh.py)
    return cls(config=config, dataset=dataset, mean=jnp.asarray(mean), std=jnp.asarray(std),
               train_images=dataset.train_images if on_host else jax.device_put(dataset.train_images),
               train_labels=labels if on_host else jax.device_put(labels),
               nets=nets, initial_params=initial_params, steps_per_epoch=steps, parallel=parallel)

  @property
  def num_train(self) -> int:
    return len(self.dataset.train_labels)

  def optimizer(self):
    """The optimizer of every phase (its schedule spans the phase's epochs)."""
    return optim.make_optimizer(optim.OptimizerConfig(**self.config.optimizer),
                                self.config.epochs * self.steps_per_epoch)

  def fresh_state(self, phase: str, optimizer, teacher_params=None) -> train.TrainState:
    """The state a phase starts from. A KD phase without `teacher_params` gets the initial teacher as a
    stand-in of the right shapes (a restore target); the mean teacher's teacher starts as the student's initial
    weights (phases.Phase.teacher_net)."""
    spec = phases.phase(phase)
    if spec.needs_teacher and teacher_params is None:
      teacher_params = self.initial_params[spec.teacher_net]
    state = train.create_state(self.initial_params[spec.net], optimizer,
                               teacher_params=teacher_params if spec.needs_teacher else None,
                               keep_student_ema=spec.net == "student" and self.config.ema.student_decay > 0)
    return self.parallel.replicate(state)   # one device: the state as it is

  def step_function(self, phase: str, optimizer, *, student_decay: float | None = None,
                    inline_teacher: bool = False):
    """The pure `(state, batch) -> (state, metrics)` step of `phase` (train.make_train_step): the one builder of
    the step, which the study jits (`train_step`) and the benchmark and the parity harness take as it is.
    student_decay overrides ema.student_decay; inline_teacher computes the teacher's logits in the step even
    where speed.cached_teacher_logits would take them from the batch (the parity harness, as the seed does)."""
    spec = phases.phase(phase)
    config = step_config(self.config, spec.step_kind, student_decay, phase=spec)
    if inline_teacher:
      config = dataclasses.replace(config, cached_teacher_logits=False)
    pairs = {"kd_ema": self.ema_pairs, "mean_teacher": self.mean_teacher_pairs}.get(spec.step_kind, tuple)()
    return train.make_train_step(config, self.nets[spec.net], optimizer, self.mean, self.std,
                                 teacher=self.nets[spec.teacher_net] if spec.needs_teacher else None,
                                 teacher_pairs=pairs)

  def train_step(self, phase: str, optimizer):
    """The jitted `(state, batch) -> (state, metrics)` of `phase` (training/jit_step.py: the state donated,
    compiled with speed.xla_cpu_options). A kd step with speed.cached_teacher_logits takes the teacher's
    logits from the batch (`cached_teacher_logits` computes them)."""
    return jit_step.jit_step(self.step_function(phase, optimizer), self.config.speed.xla_cpu_options,
                             self.parallel)   # over several devices the state and metrics come back replicated

  def cached_teacher_logits(self, phase: str, teacher_params) -> jax.Array | None:
    """The frozen teacher's logits for the whole train split when `phase`'s step takes them from the batch
    (kd with speed.cached_teacher_logits), else None: the same numbers the step would compute, once."""
    spec = phases.phase(phase)
    if not step_config(self.config, spec.step_kind, phase=spec).cached_teacher_logits:
      return None
    if self.parallel.mesh is not None:   # host memory, gathered per batch like the images
      return evaluate.predict(self.nets["teacher"], teacher_params, self.train_images, self.mean, self.std,
                              self.config.batch_size, self.parallel)
    return train.teacher_logits(self.nets["teacher"], teacher_params, self.train_images, self.mean, self.std,
                                self.config.batch_size,
                                compiler_options=xla.compiler_options(self.config.speed.xla_cpu_options))

  def ema_pairs(self) -> list:
    """The (student path, teacher path) pairs the original's EMA updates (ema.torch_zip_pairs)."""
    return ema.torch_zip_pairs(self.initial_params["student"], self.nets["student"].layer_names,
                          self.initial_params["teacher"], self.nets["teacher"].layer_names)

  def mean_teacher_pairs(self) -> list:
    """The mean teacher's pairs: the student's tensors with themselves (same architecture: every tensor pairs)."""
    layers = self.nets["student"].layer_names
    return ema.torch_zip_pairs(self.initial_params["student"], layers, self.initial_params["student"], layers)

  def evaluate(self, net: str, params) -> tuple[dict, np.ndarray]:
    """(metrics, logits) of `net` with `params` on the whole validation split."""
    logits = evaluate.predict(self.nets[net], params, self.dataset.val_images, self.mean, self.std,
                              self.config.eval_batch_size, self.parallel)
    return evaluate.classification_metrics(logits, self.dataset.val_labels), logits

  def model_stats(self, net: str) -> tuple[int, int]:
    """(parameter count, forward FLOPs per image) of `net`."""
    return (models.param_count(self.initial_params[net]),
            models.flops_per_image(self.nets[net], self.dataset.image_shape))
