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
import pathlib
import sys
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
from kdjax.config import ConfigError
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
EMA_WEIGHTS_SUFFIX = ckpt_lib.EMA_WEIGHTS_SUFFIX


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
  source: dict | None = None   # provenance of a model loaded from teacher.checkpoint instead of trained


class Study:
  """Everything shared by the phases of one run: data on device, models, initial weights, the run dir.

  A workdir that already holds a run is resumed: its config must match (fields in config.RESULT_NEUTRAL
  aside, or checkpoint.allow_config_change), every phase's latest checkpoint is read *before* anything in
  the workdir is written, phases saved at their last epoch are loaded instead of trained, and the phase that
  was interrupted continues after its last saved epoch. Since the data order is a function of (seed, epoch)
  and the saved state is the whole TrainState, the resumed run computes what the uninterrupted one would.
  """

  def __init__(self, config, workdir):
    config_lib.validate(config)
    self.config = config
    self.run = RunDir(workdir)
    self.config_json = json.loads(config.to_json_best_effort())
    self.config_changes = self._check_config()
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
    self.loaded: dict[str, int] = {}    # phase -> epoch of the checkpoint it was loaded from, not trained
    self.resumed: dict[str, int] = {}   # phase -> the saved epoch it continued after
    # Everything that can be wrong with a checkpoint shows here, before the workdir is touched.
    self.teacher_source = self._read_teacher_source() if config.teacher.checkpoint else None
    self.saved = self._read_saved_phases()
    self.run.write_json("config.json", self.config_json)
    self.run.rewrite_metrics([record for _, meta in self.saved.values() for record in meta["records"]])

  # --- resuming ------------------------------------------------------------------------------------------

  def _check_config(self) -> list[str]:
    """The differences to the workdir's config.json; ConfigError unless none or allowed."""
    path = self.run.file("config.json")
    if not path.exists():
      return []
    try:
      saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
      raise ConfigError(f"workdir: cannot read {path}: {error}") from None
    changes = config_lib.differences(saved, self.config_json)
    if changes and not self.config.checkpoint.allow_config_change:
      raise ConfigError(f"workdir {self.run.path} holds a run with another config: {'; '.join(changes)} "
                        f"(use a new workdir, or --config.checkpoint.allow_config_change=True to resume "
                        f"it with this config)")
    if changes:
      print(f"kdjax: warning: resuming {self.run.path} with a changed config: {'; '.join(changes)}",
            file=sys.stderr, flush=True)
    return changes

  def _optimizer(self):
    return optim.make_optimizer(self.config.optimizer, self.config.epochs * self.steps_per_epoch)

  def _fresh_state(self, phase: str, optimizer, teacher_params=None) -> train.TrainState:
    spec = PHASE_SPECS[phase]
    if spec.step_kind != "ce" and teacher_params is None:
      teacher_params = self.initial_params["teacher"]  # a stand-in of the right shapes (restore targets)
    return train.create_state(self.initial_params[spec.net], optimizer,
                              teacher_params=teacher_params if spec.step_kind != "ce" else None,
                              keep_student_ema=spec.net == "student" and self.config.ema.student_decay > 0)

  def _read_saved_phases(self) -> dict[str, tuple[dict, dict]]:
    """phase -> (state tree, meta) of its latest save in this workdir, for the phases that have one."""
    saved = {}
    for phase in self.config.phases:
      if phase == "teacher" and self.teacher_source is not None:
        continue
      folder = self.run.checkpoints / phase
      if not ckpt_lib.step_names(folder):
        continue
      reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
      target = ckpt_lib.state_tree(self._fresh_state(phase, self._optimizer()))
      tree, meta = reader.restore(target=target)
      reader.close()
      epoch = reader.latest_epoch()
      if meta.get("phase") != phase or meta.get("epoch") != epoch or "records" not in meta:
        raise ckpt_lib.CheckpointError(f"{folder / str(epoch)}: not a checkpoint of phase {phase!r} "
                                       f"written by this version of kdjax")
      if int(tree["step"]) != meta["step"]:
        raise ckpt_lib.CheckpointError(f"{folder / str(epoch)}: step {int(tree['step'])} in the state but "
                                       f"{meta['step']} in the meta")
      saved[phase] = (tree, meta)
    return saved

  def _read_teacher_source(self) -> dict:
    """Reads teacher.checkpoint: {"params", "meta", "provenance"}; one-line errors name the path."""
    folder, epoch = ckpt_lib.resolve(self.config.teacher.checkpoint, "teacher")
    reader = ckpt_lib.ModelCheckpoints(folder, read_only=True)
    tree, meta = reader.restore(epoch)
    epoch = meta.get("epoch", epoch if epoch is not None else reader.latest_epoch())
    reader.close()
    where = folder / str(epoch)
    if "params" not in tree:
      raise ckpt_lib.CheckpointError(f"{where}: holds no params")
    expected = self.initial_params["teacher"]
    got_shapes = jax.tree_util.tree_map(np.shape, tree["params"])
    want_shapes = jax.tree_util.tree_map(np.shape, expected)
    if got_shapes != want_shapes:
      raise ckpt_lib.CheckpointError(
          f"{where}: its teacher does not fit this run's TeacherNet ({self.dataset.num_classes} classes, "
          f"{'x'.join(map(str, self.dataset.image_shape))} images): fc.kernel "
          f"{got_shapes.get('fc', {}).get('kernel')} vs {want_shapes['fc']['kernel']}")
    source_config = meta.get("config", {})
    source_activation = source_config.get("model", {}).get("activation", self.config.model.activation)
    if source_activation != self.config.model.activation:
      raise ckpt_lib.CheckpointError(
          f"{where}: its teacher was trained with model.activation={source_activation!r}, this run uses "
          f"{self.config.model.activation!r}")
    data_changes = [change for change in config_lib.differences(source_config.get("data", {}),
                                                                self.config_json["data"])
                    if not change.startswith(("data_dir", "manual_dir"))] if source_config else []
    if data_changes:
      print(f"kdjax: warning: the teacher from {where} was trained on other data settings: "
            f"{'; '.join(data_changes)}", file=sys.stderr, flush=True)
    epochs = meta.get("epochs", [])
    provenance = {"checkpoint": str(where), "epoch": epoch, "step": meta.get("step"),
                  "finished": meta.get("finished"),
                  "source_workdir": str(folder.parent.parent) if folder.parent.name == "checkpoints" else None,
                  "source_val_top1": epochs[-1]["val_top1"] if epochs else None,
                  "data_differences": data_changes}
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree["params"])
    return {"params": params, "meta": meta, "provenance": provenance}

  def _load_teacher(self) -> None:
    """The teacher phase when teacher.checkpoint is set: evaluate the given teacher, keep a copy here."""
    source = self.teacher_source
    result = self._new_result("teacher", "teacher", "teacher")
    result.epochs = list(source["meta"].get("epochs", []))
    result.source = source["provenance"]
    result.final, result.val_logits = self._evaluate("teacher", source["params"])
    self.trained_teacher = source["params"]
    epoch = source["provenance"]["epoch"]
    own = self.run.checkpoints / "teacher"
    if pathlib.Path(source["provenance"]["checkpoint"]).parent != own.absolute() and \
        epoch not in ckpt_lib.step_names(own):
      writer = ckpt_lib.ModelCheckpoints(own, self.config.checkpoint.keep)
      meta = {key: value for key, value in source["meta"].items() if key != "records"}
      writer.save(epoch, {"params": source["params"]}, dict(meta, source=source["provenance"]))
      writer.close()
    print(f"[teacher] loaded from {source['provenance']['checkpoint']} (epoch {epoch}), not trained: "
          f"val_top1 {result.final['val_top1']:.2f}% on this run's validation split", flush=True)

  # --- training ------------------------------------------------------------------------------------------

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

  def phases(self) -> tuple[str, ...]:
    """The phases to run: config.phases, with the teacher first when teacher.checkpoint provides it."""
    phases = tuple(self.config.phases)
    if self.teacher_source is not None and "teacher" not in phases:
      phases = ("teacher",) + phases
    return phases

  def run_phase(self, phase: str) -> None:
    if phase == "teacher" and self.teacher_source is not None:
      self._load_teacher()
      return
    config, spec = self.config, PHASE_SPECS[phase]
    needs_teacher = spec.step_kind != "ce"
    keep_student_ema = spec.net == "student" and config.ema.student_decay > 0
    optimizer = self._optimizer()
    state = self._fresh_state(phase, optimizer, teacher_params=self.trained_teacher if needs_teacher else None)

    tracked = {phase: (spec.net, lambda s: s.params)}
    if spec.step_kind == "kd_ema":
      tracked[TEACHER_EMA] = ("teacher", lambda s: s.teacher_params)
    if keep_student_ema:
      tracked[phase + EMA_WEIGHTS_SUFFIX] = (spec.net, lambda s: s.ema_params)
    results = {name: self._new_result(name, net, phase) for name, (net, _) in tracked.items()}
    records: list[dict] = []

    start_epoch = 0
    if phase in self.saved:
      tree, meta = self.saved.pop(phase)
      state = ckpt_lib.state_from_tree(state, tree)
      start_epoch = meta["epoch"]
      records = list(meta["records"])
      for name, saved_result in meta["results"].items():
        results[name].epochs = list(saved_result["epochs"])
        results[name].train_seconds = saved_result["train_seconds"]
        results[name].train_images = saved_result["train_images"]
      where = self.run.checkpoints / phase / str(start_epoch)
      if start_epoch >= config.epochs:
        self.loaded[phase] = start_epoch
        for name, (net, params_of) in tracked.items():
          results[name].final, results[name].val_logits = self._evaluate(net, params_of(state))
        print(f"[{phase}] finished earlier: loaded epoch {start_epoch} from {where}", flush=True)
        if phase == "teacher":
          self.trained_teacher = state.params
        return
      self.resumed[phase] = start_epoch
      print(f"[{phase}] resuming after epoch {start_epoch} from {where}", flush=True)

    pairs = ()
    if spec.step_kind == "kd_ema":
      pairs = ema.seed_pairs(self.initial_params["student"], self.nets["student"].layer_names,
                             self.initial_params["teacher"], self.nets["teacher"].layer_names)
    step_fn = jax.jit(train.make_train_step(
        self._step_config(spec.step_kind), self.nets[spec.net], optimizer, self.mean, self.std,
        teacher=self.nets["teacher"] if needs_teacher else None, teacher_pairs=pairs), donate_argnums=0)
    saver = {name: ckpt_lib.ModelCheckpoints(self.run.checkpoints / name, config.checkpoint.keep)
             for name in tracked if not name.endswith(EMA_WEIGHTS_SUFFIX)}
    for manager in saver.values():
      manager.delete_after(start_epoch)  # steps of an interrupted attempt that the phase's own save lacks

    for epoch in range(start_epoch + 1, config.epochs + 1):
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
        record = {"phase": phase, "model": name, "epoch": epoch,
                  "train_loss": epoch_result.train_loss if name == phase else None,
                  "val_loss": metrics["val_loss"], "val_top1": metrics["val_top1"],
                  "val_top5": metrics["val_top5"], "step": step, "seconds": epoch_result.seconds}
        result.epochs.append({k: record[k] for k in ("epoch", "train_loss", "val_loss", "val_top1")})
        records.append(record)
        self.run.append_metrics(record)
        if config.log_every_epoch:
          loss = f"train_loss {epoch_result.train_loss:.4f}  " if name == phase else ""
          print(f"[{name}] epoch {epoch}/{config.epochs}  {loss}val_loss {metrics['val_loss']:.4f}  "
                f"val_top1 {metrics['val_top1']:.2f}%  val_top5 {metrics['val_top5']:.2f}%  "
                f"({epoch_result.seconds:.1f} s)", flush=True)
      trained = results[phase]
      trained.train_seconds += epoch_result.seconds
      trained.train_images += len(self.train_labels)
      for result in results.values():  # the phase's other models were trained by the same steps
        result.train_seconds, result.train_images = trained.train_seconds, trained.train_images
      if epoch % config.checkpoint.every_epochs == 0 or epoch == config.epochs:
        self._save(saver, state, phase, epoch, step, results, records)
    for manager in saver.values():
      manager.close()
    if phase == "teacher":
      self.trained_teacher = state.params

  def _save(self, saver, state, phase, epoch, step, results, records) -> None:
    """One step per model: the phase's model holds everything a resume needs (the whole TrainState, the
    metrics of every model of the phase so far, the data-order state); teacher_ema holds its params."""
    phase_results = {name: {"epochs": result.epochs, "train_seconds": result.train_seconds,
                            "train_images": result.train_images} for name, result in results.items()}
    for name, manager in saver.items():
      net = "teacher" if name == TEACHER_EMA else PHASE_SPECS[phase].net
      tree = ({"params": state.teacher_params} if name == TEACHER_EMA
              else ckpt_lib.state_tree(state))
      meta = {"phase": phase, "model": name, "net": net, "layer_names": list(self.nets[net].layer_names),
              "epoch": epoch, "epochs_total": self.config.epochs, "finished": epoch == self.config.epochs,
              "step": step, "steps_per_epoch": self.steps_per_epoch,
              # epoch_order(n, seed, epoch) depends on nothing else: the next epoch's order is known.
              "data_order": {"seed": self.config.seed, "next_epoch": epoch + 1,
                             "rule": "numpy default_rng([seed, epoch]).permutation(train_examples)"},
              "epochs": results[name].epochs, "config": self.config_json}
      if name == phase:
        meta.update(records=records, results=phase_results)
      manager.save(epoch, tree, meta)

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
    report["checkpoints"] = {"directory": str(self.run.checkpoints.absolute()), "loaded": self.loaded,
                             "resumed": self.resumed, "config_changes": self.config_changes}
    report_lib.write(self.run, report, self.results)
    return report


def train_and_evaluate(config, workdir) -> dict:
  """Runs every phase in config.phases and returns report.json's content (also written to workdir)."""
  start = time.perf_counter()
  study = Study(config, workdir)
  for phase in study.phases():
    study.run_phase(phase)
  report = study.finish()
  report["wall_seconds"] = time.perf_counter() - start
  study.run.write_json("report.json", report)
  return report
