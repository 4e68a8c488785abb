"""The one table of the study's phases and the models they report; every module reads its names from here.

  phase           net      step kind  models it reports (besides its own)
  teacher         teacher  ce
  student_ce      student  ce         "student_ce (EMA weights)"     when ema.student_decay > 0
  student_kd      student  kd         "student_kd (EMA weights)"     when ema.student_decay > 0
  student_kd_ema  student  kd_ema     teacher_ema (the teacher copy the seed's EMA pulls toward the student),
                                      "student_kd_ema (EMA weights)" when ema.student_decay > 0

A model is a row of the report. Each is a tree of the phase's TrainState (`params`, `teacher_params` or
`ema_params`, see train.TrainState) and has a checkpoint folder of its own unless it is an EMA-weights row,
which lives in its phase's folder.
"""

import dataclasses

TEACHER_EMA = "teacher_ema"
EMA_WEIGHTS_SUFFIX = " (EMA weights)"   # timm's habit: the averaged weights of a model, reported apart


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  net: str          # "teacher" or "student": the key of models.MODEL_FACTORIES
  step_kind: str    # see train.STEP_KINDS

  @property
  def needs_teacher(self) -> bool:
    return self.step_kind != "ce"


PHASES = {phase.name: phase for phase in (
    Phase("teacher", "teacher", "ce"),
    Phase("student_ce", "student", "ce"),
    Phase("student_kd", "student", "kd"),
    Phase("student_kd_ema", "student", "kd_ema"),
)}
PHASE_NAMES = tuple(PHASES)


@dataclasses.dataclass(frozen=True)
class Model:
  """A row of the report: which phase trains it, its net, and where in the TrainState its params are."""

  name: str
  phase: str
  net: str
  state_field: str   # "params" | "teacher_params" | "ema_params"

  @property
  def own_checkpoint(self) -> bool:
    """EMA-weights rows are saved inside their phase's TrainState, not in a folder of their own."""
    return self.state_field != "ema_params"


def models_of(phase: str, student_decay: float) -> list[Model]:
  """The models `phase` reports, its own first."""
  spec = PHASES[phase]
  tracked = [Model(phase, phase, spec.net, "params")]
  if spec.step_kind == "kd_ema":
    tracked.append(Model(TEACHER_EMA, phase, "teacher", "teacher_params"))
  if spec.net == "student" and student_decay > 0:
    tracked.append(Model(phase + EMA_WEIGHTS_SUFFIX, phase, spec.net, "ema_params"))
  return tracked


def model(name: str) -> Model:
  """The Model of a report row's name (e.g. "teacher_ema", "student_kd (EMA weights)"); KeyError if none."""
  phase = name[:-len(EMA_WEIGHTS_SUFFIX)] if name.endswith(EMA_WEIGHTS_SUFFIX) else name
  if name == TEACHER_EMA:
    phase = "student_kd_ema"
  for candidate in models_of(phase, student_decay=1.0) if phase in PHASES else ():
    if candidate.name == name:
      return candidate
  raise KeyError(name)


# Every model that has a checkpoint folder, in the order runs list them (inspection, reports).
MODEL_ORDER = tuple(m.name for phase in PHASE_NAMES for m in models_of(phase, 0.0))
