"""The study: train the teacher, then the students, evaluate each every epoch, and write the report.

Phases (each config.epochs epochs, evaluated on the whole validation split after every epoch):
  teacher         TeacherNet on labels (cross-entropy)
  student_ce      StudentNet on labels: the baseline that says whether KD helps
  student_kd      StudentNet by the seed's KD loss against the frozen trained teacher
  student_kd_ema  the seed's EMA loop: KD against a copy of the trained teacher that the seed's EMA pulls toward
                  the student every step; that copy is evaluated and reported as `teacher_ema`
All students start from the same initial weights and see the same batches in the same order.
"""

import dataclasses
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import checkpoints as ckpt_lib
from kdjax import config as config_lib
from kdjax import data as data_lib
from kdjax import ema
from kdjax import evaluate
from kdjax import models
from kdjax import optim
from kdjax import report as report_lib
from kdjax import train
from kdjax.rundir import RunDir


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
  net: str          # "teacher" or "student"
  step_kind: str    # see train.STEP_KINDS


PHASE_SPECS = {
    "teacher": PhaseSpec("teacher", "ce"),
    "student_ce": PhaseSpec("student", "ce"),
    "student_kd": PhaseSpec("student", "kd"),
    "student_kd_ema": PhaseSpec("student", "kd_ema"),
}
TEACHER_EMA = "teacher_ema"
EMA_WEIGHTS_SUFFIX = " (EMA weights)"


@dataclasses.dataclass
class ModelResult:
  """What the report needs of one evaluated model."""

  name: str
  net: str
  phase: str
  params: int
  flops_per_image: int
  epochs: list = dataclasses.field(default_factory=list)
  final: dict = dataclasses.field(default_factory=dict)
  val_logits: Any = None
  train_seconds: float = 0.0
  train_images: int = 0


class Study:
  """Everything shared by the phases of one run: data on device, models, initial weights, the run dir."""

  def __init__(self, config, workdir):
    config_lib.validate(config)
    self.config = config
    self.run = RunDir(workdir)
    self.run.write_json("config.json", json.loads(config.to_json_best_effort()))
    self.dataset = data_lib.load(config.data)
    self.mean, self.std = (jnp.asarray(a) for a in
                           data_lib.normalization_constants(self.dataset, config.data.normalization))
    self.train_images = jax.device_put(self.dataset.train_images)
    self.train_labels = jax.device_put(self.dataset.train_labels.astype(np.int32))
    self.nets = {role: factory(self.dataset.num_classes, config.model.activation, config.model.init)
                 for role, factory in models.MODEL_FACTORIES.items()}
    teacher_key, student_key = jax.random.split(jax.random.PRNGKey(config.seed))
    self.initial_params = {
        "teacher": models.init_params(self.nets["teacher"], teacher_key, self.dataset.image_shape),
        "student": models.init_params(self.nets["student"], student_key, self.dataset.image_shape),
    }
    self.steps_per_epoch = len(data_lib.batch_indices(np.arange(len(self.train_labels)),
                                                      config.batch_size, config.data.drop_remainder))
    self.results: dict[str, ModelResult] = {}
    self.trained_teacher = None

  def _new_result(self, name: str, net: str, phase: str) -> ModelResult:
    model = self.nets[net]
    result = ModelResult(name=name, net=net, phase=phase,
                         params=models.param_count(self.initial_params[net]),
                         flops_per_image=models.flops_per_image(model, self.dataset.image_shape))
    self.results[name] = result
    return result

  def _evaluate(self, net: str, params) -> tuple[dict, np.ndarray]:
    logits = evaluate.predict(self.nets[net], params, self.dataset.val_images, self.mean, self.std,
                              self.config.eval_batch_size)
    return evaluate.classification_metrics(logits, self.dataset.val_labels), logits

  def _step_config(self, kind: str) -> train.StepConfig:
    return train.StepConfig(kind=kind, temperature=float(self.config.kd.temperature),
                            kd_weight=float(self.config.kd.kd_weight),
                            ce_weight=float(self.config.kd.ce_weight),
                            teacher_decay=float(self.config.ema.decay),
                            student_decay=float(self.config.ema.student_decay),
                            warmup=bool(self.config.ema.warmup))

  def run_phase(self, phase: str) -> None:
    config, spec = self.config, PHASE_SPECS[phase]
    needs_teacher = spec.step_kind != "ce"
    keep_student_ema = spec.net == "student" and config.ema.student_decay > 0
    optimizer = optim.make_optimizer(config.optimizer, config.epochs * self.steps_per_epoch)
    student_params = self.initial_params[spec.net]
    pairs = ()
    if spec.step_kind == "kd_ema":
      pairs = ema.seed_pairs(student_params, self.nets["student"].layer_names, self.trained_teacher,
                             self.nets["teacher"].layer_names)
    step_fn = jax.jit(train.make_train_step(
        self._step_config(spec.step_kind), self.nets[spec.net], optimizer, self.mean, self.std,
        teacher=self.nets["teacher"] if needs_teacher else None, teacher_pairs=pairs), donate_argnums=0)
    state = train.create_state(student_params, optimizer,
                               teacher_params=self.trained_teacher if needs_teacher else None,
                               keep_student_ema=keep_student_ema)

    tracked = {phase: (spec.net, lambda s: s.params)}
    if spec.step_kind == "kd_ema":
      tracked[TEACHER_EMA] = ("teacher", lambda s: s.teacher_params)
    if keep_student_ema:
      tracked[phase + EMA_WEIGHTS_SUFFIX] = (spec.net, lambda s: s.ema_params)
    results = {name: self._new_result(name, net, phase) for name, (net, _) in tracked.items()}
    saver = {name: ckpt_lib.ModelCheckpoints(self.run.checkpoints / name, config.checkpoint.keep)
             for name in tracked if not name.endswith(EMA_WEIGHTS_SUFFIX)}

    for epoch in range(1, config.epochs + 1):
      order = data_lib.epoch_order(len(self.train_labels), config.seed, epoch)
      description = f"{phase} epoch {epoch}/{config.epochs}"
      try:
        state, epoch_result = train.run_epoch(step_fn, state, self.train_images, self.train_labels, order,
                                              config.batch_size, config.data.drop_remainder, description,
                                              config.progress)
      except train.DivergenceError as error:
        raise train.DivergenceError(f"phase {phase}, epoch {epoch}: {error}") from None
      step = int(state.step)
      for name, (net, params_of) in tracked.items():
        metrics, logits = self._evaluate(net, params_of(state))
        result = results[name]
        result.final, result.val_logits = metrics, logits
        result.train_seconds += epoch_result.seconds if name == phase else 0.0
        record = {"phase": phase, "model": name, "epoch": epoch,
                  "train_loss": epoch_result.train_loss if name == phase else None,
                  "val_loss": metrics["val_loss"], "val_top1": metrics["val_top1"],
                  "val_top5": metrics["val_top5"], "step": step, "seconds": epoch_result.seconds}
        result.epochs.append({k: record[k] for k in ("epoch", "train_loss", "val_loss", "val_top1")})
        self.run.append_metrics(record)
        if config.log_every_epoch:
          loss = f"train_loss {epoch_result.train_loss:.4f}  " if name == phase else ""
          print(f"[{name}] epoch {epoch}/{config.epochs}  {loss}val_loss {metrics['val_loss']:.4f}  "
                f"val_top1 {metrics['val_top1']:.2f}%  val_top5 {metrics['val_top5']:.2f}%  "
                f"({epoch_result.seconds:.1f} s)", flush=True)
      results[phase].train_images += len(self.train_labels)
      if epoch % config.checkpoint.every_epochs == 0 or epoch == config.epochs:
        self._save(saver, state, phase, epoch, step, results)
    for name in tracked:
      results[name].train_seconds = results[phase].train_seconds
      results[name].train_images = results[phase].train_images
    for manager in saver.values():
      manager.close()
    if phase == "teacher":
      self.trained_teacher = state.params

  def _save(self, saver, state, phase, epoch, step, results) -> None:
    for name, manager in saver.items():
      tree = ({"params": state.teacher_params} if name == TEACHER_EMA
              else ckpt_lib.state_tree(state))
      manager.save(epoch, tree, {"phase": phase, "model": name, "epoch": epoch, "step": step,
                                 "epochs": results[name].epochs})

  def finish(self) -> dict:
    teacher = self.results.get("teacher")
    for result in self.results.values():
      if result.net == "student" and teacher is not None:
        result.final.update(evaluate.teacher_comparison(result.val_logits, teacher.val_logits))
    if TEACHER_EMA in self.results and teacher is not None:
      student = self.results["student_kd_ema"]
      ema_teacher = self.results[TEACHER_EMA]
      student.final["agreement_with_teacher_ema"] = evaluate.teacher_comparison(
          student.val_logits, ema_teacher.val_logits)["agreement_with_teacher"]
    report = report_lib.build(self.config, self.dataset, self.results)
    report_lib.write(self.run, report, self.results)
    return report


def train_and_evaluate(config, workdir) -> dict:
  """Runs every phase in config.phases and returns report.json's content (also written to workdir)."""
  start = time.perf_counter()
  study = Study(config, workdir)
  for phase in config.phases:
    study.run_phase(phase)
  report = study.finish()
  report["wall_seconds"] = time.perf_counter() - start
  study.run.write_json("report.json", report)
  return report
