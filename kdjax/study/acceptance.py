"""When a phase's epoch counts as a result: it took at least one training step, and its training loss and every
model's validation metrics are finite; a distillation epoch also moved the student (its parameters changed and its
loss was not 0 on every step). Anything else stops the run with one line naming the phase, the epoch and the
metric, before the epoch is recorded, saved or reported (a model whose weights overflowed can keep a finite
training loss while its validation loss is NaN; an epoch of zero steps evaluates untrained nets; a KD loss that
rounds to 0 trains nothing, and the report would compare an untrained student).

    check_steps(config, setup)                        before anything is written: a split too small for one batch
    check_epoch(config, phase, epoch, result, evaluated)   after each epoch's evaluation
"""

import math

from kdjax import phases
from kdjax.errors import ConfigError
from kdjax.errors import DivergenceError
from kdjax.errors import StalledTrainingError

# The validation metrics that must be finite for a model's epoch to be a result.
VALIDATION_METRICS = ("val_loss", "val_top1", "val_top5")


def _scale_fields(config, phase: str) -> str:
  """The fields that set a loss's scale, to check when it is not finite (KD phases: kd.temperature too)."""
  fields = f"optimizer.learning_rate={config.optimizer.learning_rate}"
  if phases.phase(phase).needs_teacher:
    fields += f", kd.temperature={config.kd.temperature}"
  return fields


def check_steps(config, steps_per_epoch: int, num_train: int) -> None:
  """ConfigError (exit 2) when an epoch would take no training step: data.drop_remainder with fewer training
  examples than batch_size. Called before the workdir is written."""
  if steps_per_epoch < 1:
    raise ConfigError(
        f"batch_size={config.batch_size} with data.drop_remainder={config.data.drop_remainder}: the "
        f"{num_train} training examples make no full batch, so no phase would take a training step "
        f"(lower batch_size or set data.drop_remainder=False)")


def check_epoch(config, phase: str, epoch: int, result, evaluated: dict) -> None:
  """DivergenceError (exit 1) unless the epoch took a step and every metric is finite; StalledTrainingError (a
  DivergenceError) when a distillation phase's epoch left the student's parameters as they were or had a loss of 0
  on every step.

  result: the epoch's train.EpochResult; evaluated: model name -> its validation metrics."""
  where = f"phase {phase}, epoch {epoch}"
  if result.steps < 1:
    raise DivergenceError(f"{where}: no training step was taken (batch_size={config.batch_size}, "
                          f"data.drop_remainder={config.data.drop_remainder}); nothing of it is kept")
  if not math.isfinite(result.train_loss):
    raise DivergenceError(f"{where}: non-finite train_loss ({result.train_loss}) (check "
                          f"{_scale_fields(config, phase)}); nothing of it is kept")
  for model, metrics in evaluated.items():
    for key in VALIDATION_METRICS:
      if key in metrics and not math.isfinite(metrics[key]):
        raise DivergenceError(
            f"{where}: {model}'s {key} is {metrics[key]} although train_loss is finite "
            f"({result.train_loss:.4g}): the weights diverged (check {_scale_fields(config, phase)}); nothing "
            f"of this epoch is kept")
  check_moved(config, phase, epoch, result)


def check_moved(config, phase: str, epoch: int, result) -> None:
  """StalledTrainingError for a distillation epoch (a phase with a teacher) that did not train the student.

  Only there: a teacher or student_ce epoch whose loss is 0 on every step can be a net that has learned its
  training set (float32 log-softmax rounds a margin above ~17 to a loss of exactly 0), while a KD loss of 0 on every
  step means the student already equals the teacher to the last bit, or a loss that rounded to nothing."""
  if not phases.phase(phase).needs_teacher:
    return
  where = f"phase {phase}, epoch {epoch}"
  if not result.params_moved:
    what = f"the student's parameters did not change in {result.steps} training step(s)"
  elif result.step_losses and all(loss == 0.0 for loss in result.step_losses):
    what = f"the training loss was 0 on every one of its {result.steps} step(s)"
  else:
    return
  raise StalledTrainingError(
      f"{where}: {what} (train_loss {result.train_loss:.4g}): nothing was distilled (likely cause: "
      f"kd.temperature={config.kd.temperature}, where a KD loss or update rounds to 0 in float32, or "
      f"optimizer.learning_rate={config.optimizer.learning_rate}); nothing of it is kept")
