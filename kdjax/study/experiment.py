"""The study: train the teacher, then the students, evaluate each every epoch, and write the report.

Phases (kdjax/phases.py; each config.epochs epochs, evaluated on the whole validation split after every epoch):
  teacher         TeacherNet on labels (cross-entropy)
  student_ce      StudentNet on labels: the baseline that says whether KD helps
  student_kd      StudentNet by the original's KD loss against the frozen trained teacher
  student_kd_ema  the original's EMA loop: KD against a copy of the trained teacher that the original's EMA pulls toward
                  the student every step; that copy is evaluated and reported as `teacher_ema`
All students start from the same initial weights and see the same batches in the same order.

    train_and_evaluate(config, workdir)
      Setup.build(config)                 data, nets, initial weights        (study/builder.py)
      resume.read_* before writing        what the workdir or a teacher holds (study/resume.py, study/teacher.py)
      run_phase(...) for each phase       epochs of train.run_epoch, evaluation, saves
      report.build / report.write         report.json, report.md, curves.png (report/build.py)
"""

import dataclasses
import time

from kdjax import data as data_lib
from kdjax import phases
from kdjax import progress
from kdjax.config import defaults as config_lib
from kdjax.config import nets as config_nets
from kdjax.config import validation as config_validation
from kdjax.report import build as report_lib
from kdjax.report import collapse
from kdjax.report import figures
from kdjax.report import over_seeds
from kdjax.report.build import ModelResult
from kdjax.store import checkpoints as ckpt_lib
from kdjax.store import meta as run_meta
from kdjax.store import resume as store_resume
from kdjax.store import teacher as teacher_lib
from kdjax.store import tensorboard
from kdjax.store.rundir import RunDir
from kdjax.study import acceptance
from kdjax.study import builder
from kdjax.study import grid
from kdjax.study import probe as probe_lib
from kdjax.study import resume
from kdjax.study import seeds
from kdjax.study import teacher as teacher_check
from kdjax.study.builder import Setup
from kdjax.training import host_memory
from kdjax.training import mesh as mesh_lib
from kdjax.training import train


@dataclasses.dataclass
class PhaseOutcome:
  results: dict                    # model name -> ModelResult
  state: train.TrainState
  loaded_epoch: int | None = None  # finished earlier: loaded from this saved epoch, not trained
  resumed_epoch: int | None = None  # interrupted earlier: continued after this saved epoch
  # the devices each part of the phase ran on: [{"epochs": [first, last], "devices": D}, ...] (a resume may
  # change mesh.num_devices, a result-neutral field; the report lists the parts)
  device_parts: list = dataclasses.field(default_factory=list)


def phases_to_run(config, teacher_source) -> tuple[str, ...]:
  """config.phases in the registry's order (phases.ALL_PHASE_NAMES), which is their dependency order: the teacher
  before any KD phase, whatever order the config lists them in; the teacher added when teacher.checkpoint
  provides it; the EMA sweep's variants of student_kd_ema last. The report lists its models in this order."""
  names = set(config.phases) | ({"teacher"} if teacher_source is not None else set())
  return (tuple(name for name in phases.ALL_PHASE_NAMES if name in names)
          + tuple(variant.name for variant in builder.sweep_phases(config)))


def diverged(config, phase: str, epoch: int, error: train.DivergenceError) -> train.DivergenceError:
  """A non-finite loss, with the fields that set the loss's scale: KD phases name kd.temperature too."""
  fields = f"optimizer.learning_rate={config.optimizer.learning_rate}"
  if phases.phase(phase).needs_teacher:
    fields += f", kd.temperature={config.kd.temperature}"
  return train.DivergenceError(f"phase {phase}, epoch {epoch}: {error} (check {fields})")


def new_result(setup: Setup, model: phases.Model) -> ModelResult:
  params, flops = setup.model_stats(model.net)
  return ModelResult(name=model.name, net=model.net, phase=model.phase, params=params, flops_per_image=flops)


def use_teacher_source(setup: Setup, run: RunDir, source: teacher_lib.TeacherSource) -> dict:
  """The teacher phase when teacher.checkpoint is set: evaluate the given teacher, keep a copy here."""
  result = new_result(setup, phases.models_of("teacher", 0.0)[0])
  result.epochs = list(source.meta.get("epochs", []))
  result.source = source.provenance
  result.final, result.val_logits = setup.evaluate("teacher", source.params)
  teacher_lib.keep_teacher_copy(run, source, setup.config.checkpoint.keep)
  progress.say(f"[teacher] loaded from {source.provenance['checkpoint']} (epoch {source.epoch}), not trained: "
               f"val_top1 {result.final['val_top1']:.2f}% on this run's validation split")
  return {"teacher": result}


def run_facts(setup: Setup, config_dict: dict) -> run_meta.RunFacts:
  """What every save of this run says alike (store/meta.py): config.json's content, the data fingerprint, the
  nets' layer names and conv paths."""
  config = setup.config
  return run_meta.RunFacts(config_json=config_dict, epochs_total=config.epochs, seed=config.seed,
                           steps_per_epoch=setup.steps_per_epoch, data=run_meta.data_fingerprint(setup.dataset),
                           layer_names={net: tuple(setup.nets[net].layer_names) for net in setup.nets},
                           conv=config_nets.conv_paths(config))


def save_phase(facts: run_meta.RunFacts, savers: dict, state: train.TrainState, phase: str, epoch: int,
               results: dict, records: list, device_parts: list | None = None) -> None:
  """One save per model with a folder: the phase's own model holds everything a resume needs (the whole
  TrainState, the metrics of every model of the phase so far, the data-order state); teacher_ema its params."""
  step = int(state.step)
  phase_results = {name: {"epochs": result.epochs, "train_seconds": result.train_seconds,
                          "train_images": result.train_images, "diagnostics": result.diagnostics}
                   for name, result in results.items()}
  for model, saver in savers.items():
    tree = (ckpt_lib.state_tree(state) if model.name == phase
            else {"params": getattr(state, model.state_field)})
    meta = run_meta.phase_meta(facts, phase, model, epoch, step, results[model.name].epochs)
    if model.name == phase:
      meta.update(records=records, results=phase_results, device_parts=device_parts or [])
    saver.save(epoch, tree, meta)


def _rewrite_broken(facts: run_meta.RunFacts, keep: int, run: RunDir, saved: store_resume.SavedPhase, state,
                    results: dict) -> None:
  """Saves again, from the phase's own intact save, the models whose save of that epoch is broken
  (resume.read_saved_phases found them and said so)."""
  for model in saved.rewrite:
    saver = ckpt_lib.ModelCheckpoints(run.checkpoints / model.name, keep)
    try:
      saver.delete_after(saved.epoch - 1)   # the broken step itself
      saver.save(saved.epoch, {"params": getattr(state, model.state_field)},
                 run_meta.phase_meta(facts, saved.meta["phase"], model, saved.epoch, int(state.step),
                                     results[model.name].epochs))
    finally:
      saver.close()


def run_phase(setup: Setup, run: RunDir, phase: str, teacher_params, saved: store_resume.SavedPhase | None,
              facts: run_meta.RunFacts, events: tensorboard.Events) -> PhaseOutcome:
  """Trains `phase` (or continues it after `saved`, or loads it when `saved` is its last epoch)."""
  config, spec = setup.config, phases.phase(phase)
  if spec.needs_trained_teacher and teacher_params is None:   # fresh_state would hold the initial teacher instead
    raise RuntimeError(f"phase {phase} distils from the trained teacher, but none was trained or loaded before it")
  host_memory.release()   # what the set-up or the previous phase freed (the reader's, evaluations'): not resident here
  optimizer = setup.optimizer()
  state = setup.fresh_state(phase, optimizer, teacher_params=teacher_params if spec.needs_trained_teacher else None)
  tracked = phases.models_of(phase, config.ema.student_decay)
  results = {model.name: new_result(setup, model) for model in tracked}
  outcome = PhaseOutcome(results, state)
  records: list[dict] = []
  # kd_ema: how the EMA-updated teacher changes (collapse.py), kept with its row.
  ema_teacher = results.get(phases.TEACHER_EMA + spec.variant) if spec.step_kind == "kd_ema" else None

  def evaluate_all(state) -> dict:
    host_memory.release()   # the epoch's step buffers: the evaluation's larger ones do not stack on them
    for model in tracked:
      results[model.name].final, results[model.name].val_logits = setup.evaluate(
          model.net, getattr(state, model.state_field))
    return {model.name: results[model.name].final for model in tracked}

  if ema_teacher is not None:   # the log-spaced steps between epoch ends, and the probe they are measured on
    mid_steps = collapse.mid_epoch_steps(config.epochs * setup.steps_per_epoch, setup.steps_per_epoch,
                                         config.ema.diagnostics_per_decade)
    probe = probe_lib.Probe(setup, len(mid_steps) + config.epochs + 1)

  def diagnose(state, epoch: int, kd_loss, full_top1: tuple[float, float] | None = None) -> None:
    # The probe's forwards come between training steps (or after the evaluations): in a heap trimmed before and after
    # them, their buffers and the steps' do not stack (docs/log/2026-12-07-memory-kd-ema-phase.md).
    host_memory.release()
    ema_teacher.diagnostics.append(probe_lib.measure(
        setup, probe, state.teacher_params, spec.net, state.params, teacher_params, epoch=epoch,
        step=int(state.step), kd_loss=None if kd_loss is None else float(kd_loss), full_top1=full_top1))
    host_memory.release()

  start_epoch = 0
  if saved is not None:
    state = setup.parallel.replicate(ckpt_lib.state_from_tree(state, saved.tree))
    start_epoch = saved.epoch
    records = list(saved.meta["records"])
    for name, saved_result in saved.meta["results"].items():
      results[name].epochs = list(saved_result["epochs"])
      results[name].train_seconds = saved_result["train_seconds"]
      results[name].train_images = saved_result["train_images"]
      results[name].diagnostics = list(saved_result.get("diagnostics", []))
    if start_epoch >= config.epochs:   # evaluated (and checked against its record) by read_saved_phases
      for name, (final, logits) in saved.evaluated.items():
        results[name].final, results[name].val_logits = final, logits
      _rewrite_broken(facts, config.checkpoint.keep, run, saved, state, results)
      progress.say(f"[{phase}] finished earlier: loaded epoch {start_epoch} from {saved.where}")
      outcome.state, outcome.loaded_epoch = state, start_epoch
      outcome.device_parts = list(saved.meta.get("device_parts", []))
      return outcome
    outcome.resumed_epoch = start_epoch
    outcome.device_parts = list(saved.meta.get("device_parts", []))
    saved_on = outcome.device_parts[-1]["devices"] if outcome.device_parts else None
    if saved_on is not None and saved_on != setup.parallel.size:
      progress.say(f"kdjax: note: [{phase}] epochs 1-{start_epoch} ran on {saved_on} device(s), the rest run on "
                   f"{setup.parallel.size}: the same computation up to float32 reduction order "
                   f"(report.json: checkpoints.device_parts)")
    progress.say(f"[{phase}] resuming after epoch {start_epoch} from {saved.where}")

  step_fn = setup.train_step(phase, optimizer)
  teacher_logits = setup.cached_teacher_logits(phase, state.teacher_params)
  savers = {model: ckpt_lib.ModelCheckpoints(run.checkpoints / model.name, config.checkpoint.keep)
            for model in tracked if model.own_checkpoint}
  for saver in savers.values():
    saver.delete_after(start_epoch)  # epochs of an interrupted attempt that the phase's own save lacks
  if saved is not None:
    _rewrite_broken(facts, config.checkpoint.keep, run, saved, state, results)
  events.start_phase([model.name for model in tracked], int(state.step))

  if ema_teacher is not None and start_epoch == 0:
    diagnose(state, 0, None, (setup.evaluate("teacher", state.teacher_params)[0]["val_top1"],
                              setup.evaluate(spec.net, state.params)[0]["val_top1"]))
  for epoch in range(start_epoch + 1, config.epochs + 1):
    order = data_lib.epoch_order(setup.num_train, config.seed, epoch)
    description = f"{phase} epoch {epoch}/{config.epochs}"
    first_step = (epoch - 1) * setup.steps_per_epoch
    watch = ema_teacher is not None and any(first_step < step < first_step + setup.steps_per_epoch
                                            for step in mid_steps)
    step_of = iter(range(first_step + 1, first_step + setup.steps_per_epoch))  # after_step's steps, in order

    def after_step(state, loss, epoch=epoch, step_of=step_of):  # every step but the epoch's last
      if next(step_of) in mid_steps:   # counted on the host: reading state.step would wait for the step
        diagnose(state, epoch, loss)

    try:
      state, epoch_result = train.run_epoch(
          step_fn, state, setup.train_images, setup.train_labels, order, config.batch_size,
          config.data.drop_remainder, description, config.progress,
          every=1 if watch else 0, after_step=after_step if watch else None,
          teacher_logits=teacher_logits, parallel=setup.parallel if setup.parallel.mesh is not None else None,
          compile_note=epoch == start_epoch + 1)
    except train.DivergenceError as error:
      raise diverged(config, phase, epoch, error) from None
    step = int(state.step)
    events.step_losses(phase, step - epoch_result.steps + 1, epoch_result.step_losses)
    if epoch == start_epoch + 1:   # the first evaluation compiles the nets' forward pass
      progress.say(f"[{phase}] evaluating {', '.join(model.name for model in tracked)} on the "
                   f"{len(setup.dataset.val_labels)} validation examples")
    evaluated = evaluate_all(state)
    acceptance.check_epoch(config, phase, epoch, epoch_result, evaluated)   # before anything of it is kept
    if ema_teacher is not None:
      diagnose(state, epoch, epoch_result.train_loss,
               (evaluated[ema_teacher.name]["val_top1"], evaluated[phase]["val_top1"]))
    for name, metrics in evaluated.items():
      record = {"phase": phase, "model": name, "epoch": epoch,
                "train_loss": epoch_result.train_loss if name == phase else None,
                "val_loss": metrics["val_loss"], "val_top1": metrics["val_top1"],
                "val_top5": metrics["val_top5"], "step": step, "seconds": epoch_result.seconds,
                "train_top1": epoch_result.train_top1 if name == phase else None}
      results[name].epochs.append({k: record[k] for k in ("epoch", "train_loss", "val_loss", "val_top1")})
      records.append(record)
      run.append_metrics(record)
      events.epoch(name, step, record)
      if config.log_every_epoch:
        trained = (f"train_loss {epoch_result.train_loss:.4f}  train_top1 {epoch_result.train_top1:.2f}%  "
                   if name == phase else "")
        progress.say(f"[{name}] epoch {epoch}/{config.epochs}  {trained}val_loss {metrics['val_loss']:.4f}  "
                     f"val_top1 {metrics['val_top1']:.2f}%  val_top5 {metrics['val_top5']:.2f}%  "
                     f"({epoch_result.seconds:.1f} s)")
    events.flush()
    trained = results[phase]
    trained.train_seconds += epoch_result.seconds
    trained.train_images += setup.num_train
    for result in results.values():  # the phase's other models were trained by the same steps
      result.train_seconds, result.train_images = trained.train_seconds, trained.train_images
    parts = outcome.device_parts
    if parts and parts[-1]["devices"] == setup.parallel.size and parts[-1]["epochs"][1] == epoch - 1:
      parts[-1]["epochs"][1] = epoch
    else:
      parts.append({"epochs": [epoch, epoch], "devices": setup.parallel.size})
    if epoch % config.checkpoint.every_epochs == 0 or epoch == config.epochs:
      save_phase(facts, savers, state, phase, epoch, results, records, parts)
  for saver in savers.values():
    saver.close()
  events.close()
  outcome.state = state
  return outcome


def saved_conv_paths(saved: dict, teacher_source: teacher_lib.TeacherSource | None) -> dict:
  """{net: [{phase, epoch, path, why}, ...]}: the saves this run resumed or took its teacher from whose convs
  another path computed (study/resume.py, study/teacher.py), each once, for report.json's environment.conv."""
  found: dict = {}
  sources = ([teacher_source.conv_saved] if teacher_source is not None else []) + [
      save.conv_saved for save in saved.values()]
  for conv_saved in sources:
    for net, entry in conv_saved.items():
      if entry not in found.setdefault(net, []):
        found[net].append(entry)
  return found


def train_and_evaluate(config, workdir, data: builder.LoadedOnce | None = None) -> dict:
  """Runs every phase in config.phases and returns report.json's content (also written to workdir).

  A workdir that already holds a run is resumed (store/resume.py): everything that can be wrong with it or with
  teacher.checkpoint shows before anything in the workdir is written. The run holds WORKDIR/.lock throughout:
  a second run on the same workdir stops with one line. data: the data set already loaded by this process (its
  seeds and grid units share one: builder.LoadedOnce).
  """
  start = time.perf_counter()
  grid.share_cores(config)   # a task's share of the cores (task_cores): before anything starts JAX's backend
  config_validation.validate(config)
  mesh_lib.initialize(config.distributed.coordinator_address, config.distributed.num_processes,
                     config.distributed.process_id)   # several hosts: before any device is touched
  builder.data_parallel(config)   # batch sizes that the devices cannot split stop here, before any write
  if config.speed.host_malloc == "tuned":
    host_memory.tune()
  run = RunDir(workdir, writer=mesh_lib.is_writer())
  data = data if data is not None else builder.LoadedOnce(config.data)
  each_seed = lambda one, seed_workdir: train_and_evaluate(one, seed_workdir, data)
  if config.get("task"):   # a share of the study's units (study/grid.py), the tasks holding the workdir together
    with run.locked(shared=True):
      return grid.run(config, run,
                      lambda one, unit_run, only: _run_locked(one, unit_run, time.perf_counter(), data, only),
                      lambda sequential: (seeds.run(sequential, run, each_seed) if sequential.num_seeds > 1
                                          else _run_locked(sequential, run, start, data)))
  with run.locked():
    if config.num_seeds > 1:   # each seed's run in seed_<s>/ holds a lock of its own
      return seeds.run(config, run, each_seed)
    return _run_locked(config, run, start, data)


def _run_locked(config, run: RunDir, start: float, data: builder.LoadedOnce,
                only: tuple[str, ...] | None = None) -> dict:
  """The study in `run` on data(); `only`: a grid unit's phases (study/grid.py), its teacher loaded, and no report."""
  config_dict = config_lib.as_json(config)
  config_changes = store_resume.check_config(run, config_dict, config.checkpoint.allow_config_change)
  setup = Setup.build(config, data())
  acceptance.check_steps(config, setup.steps_per_epoch, setup.num_train)
  teacher_source = (teacher_check.read_teacher(config.teacher.checkpoint, setup, config_dict)
                    if config.teacher.checkpoint else None)
  if teacher_source is not None:   # read onto one device; several devices take it replicated
    teacher_source.params = setup.parallel.replicate(teacher_source.params)
  names = phases_to_run(config, teacher_source)
  if [name for name in names if name in config.phases] != list(config.phases):
    progress.say(f"kdjax: note: phases run in dependency order: {', '.join(names)}")
  if only is not None:
    names = tuple(name for name in names if name in only)
  trained_here = [name for name in names if not (name == "teacher" and teacher_source is not None)]
  saved, saved_changes = resume.read_saved_phases(run, setup, trained_here, config_dict,
                                                  config.checkpoint.allow_config_change)
  checkpoint_changes = [change for change in saved_changes if change not in config_changes]
  if checkpoint_changes:   # allowed (checkpoint.allow_config_change), but config.json did not show them
    progress.warn(f"resuming checkpoints saved with another config or data: {'; '.join(checkpoint_changes)}")
  config_changes += checkpoint_changes
  run.write_json("config.json", config_dict)
  facts = run_facts(setup, config_dict)
  run.rewrite_metrics([record for phase_save in saved.values() for record in phase_save.meta["records"]])

  results: dict[str, ModelResult] = {}
  loaded, resumed, device_parts = {}, {}, {}
  teacher_params = None
  events = tensorboard.Events(run.path / "tensorboard", config.log_every_steps, enabled=run.writer)
  if run.writer:
    tensorboard.write_config(run.path / "tensorboard", config_dict)
  try:
    for phase in names:
      if phase not in trained_here:
        results.update(use_teacher_source(setup, run, teacher_source))
        teacher_params = teacher_source.params
        continue
      outcome = run_phase(setup, run, phase, teacher_params, saved.get(phase), facts, events)
      results.update(outcome.results)
      if outcome.loaded_epoch is not None:
        loaded[phase] = outcome.loaded_epoch
      if outcome.resumed_epoch is not None:
        resumed[phase] = outcome.resumed_epoch
      device_parts[phase] = outcome.device_parts
      if phase == "teacher":
        teacher_params = outcome.state.params
  finally:
    events.close()  # what was flushed stays readable after an error
  if only is not None:   # a grid unit: the merge builds the report from every unit's saves
    return {"phases": list(names), "loaded": loaded, "resumed": resumed}

  report_lib.compare_to_teachers(results)
  checkpoints = {"directory": str(run.checkpoints.absolute()), "loaded": loaded, "resumed": resumed,
                 "config_changes": config_changes, "device_parts": device_parts}
  report = report_lib.build(config.to_dict(), setup.dataset, results, checkpoints, time.perf_counter() - start,
                            conv=config_nets.describe(config, saved_conv_paths(saved, teacher_source)),
                            ema_sweep=builder.ema_sweep(config), batch_size=config.batch_size,
                            data_parallel=setup.parallel.size)
  summary = over_seeds.summarize([report], [config.seed])  # one seed: std None, per_seed of one, comparisons
  for name, entry in summary["models"].items():
    report["models"][name].update({key: value for key, value in entry.items()
                                   if key.endswith("_std") or key == "per_seed"})
  report["comparisons"], report["comparison_family"] = summary["comparisons"], summary["comparison_family"]
  if run.writer:
    progress.say(f"writing report.json, the figures and report.md to {run.path}")
    report_lib.write(run, report, report_lib.markdown(report),
                     lambda path: report_lib.plot_curves(results, path, figures.title(report)))
  return report
