"""The one table of the study's phases and the models they report; every module reads its names from here.

  phase           net      step kind  models it reports (besides its own)
  teacher         teacher  ce
  student_ce      student  ce         "student_ce (EMA weights)"     when ema.student_decay > 0
  student_kd      student  kd         "student_kd (EMA weights)"     when ema.student_decay > 0
  student_kd_ema  student  kd_ema     teacher_ema (the teacher copy the original's EMA pulls toward the student),
                                      "student_kd_ema (EMA weights)" when ema.student_decay > 0
  student_mean_teacher  student  mean_teacher   mean_teacher (the teacher: an EMA of the student's own weights,
                                      every tensor paired, started from the student's initial weights, with the
                                      warm-up min(1 - 1/(t + 1), alpha) whatever ema.warmup says),
                                      "student_mean_teacher (EMA weights)" when ema.student_decay > 0

PHASE_NAMES are the original's study (kd.py and ema.py take from them); the mean teacher is the working EMA beside
the original's (configs/mean_teacher.py), in ALL_PHASE_NAMES, which a config's `phases` may hold and which is the
dependency order the phases run in.

A model is a row of the report. Each is a tree of the phase's TrainState (`params`, `teacher_params` or
`ema_params`, see train.TrainState) and has a checkpoint folder of its own unless it is an EMA-weights row,
which lives in its phase's folder.

The EMA sweep (config ema.sweep) adds variants of student_kd_ema with another alpha and/or the mean-teacher
warm-up: `student_kd_ema@0.99` (and `student_kd_ema@0.99+warmup`) reporting `teacher_ema@0.99` (...+warmup).
"""

import dataclasses

TEACHER_EMA = "teacher_ema"
EMA_WEIGHTS_SUFFIX = " (EMA weights)"   # timm's habit: the averaged weights of a model, reported apart
SWEEP_MARK = "@"                        # student_kd_ema@<alpha>[+warmup]
WARMUP_MARK = "+warmup"


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str
  net: str          # "teacher" or "student": the key of models.MODEL_FACTORIES
  step_kind: str    # see train.STEP_KINDS
  teacher_decay: float | None = None   # an EMA-sweep variant's alpha (None: config ema.decay)
  warmup: bool | None = None           # an EMA-sweep variant's warm-up, the mean teacher's (None: config ema.warmup)

  @property
  def needs_teacher(self) -> bool:
    """Whether the step distils from a teacher (the TrainState holds teacher_params)."""
    return self.step_kind != "ce"

  @property
  def teacher_net(self) -> str | None:
    """The net of the teacher the step distils from: the trained TeacherNet (kd, kd_ema), the phase's own net for
    the mean teacher (an EMA of its own weights), None without a teacher (ce)."""
    if not self.needs_teacher:
      return None
    return self.net if self.step_kind == "mean_teacher" else "teacher"

  @property
  def needs_trained_teacher(self) -> bool:
    """Whether the phase distils from the teacher phase's trained TeacherNet (the mean teacher does not)."""
    return self.teacher_net == "teacher"

  @property
  def variant(self) -> str:
    """"" for a phase of the table, "@0.99" / "@0.99+warmup" for an EMA-sweep variant."""
    return self.name[len("student_kd_ema"):] if self.teacher_decay is not None else ""


PHASES = {phase.name: phase for phase in (
    Phase("teacher", "teacher", "ce"),
    Phase("student_ce", "student", "ce"),
    Phase("student_kd", "student", "kd"),
    Phase("student_kd_ema", "student", "kd_ema"),
    # The mean teacher's own warm-up (Tarvainen & Valpola's code): without it, at alpha = 0.999 its teacher still
    # holds alpha^k of the student's random initial weights after k updates (79 % after digits' 230: at chance).
    Phase("student_mean_teacher", "student", "mean_teacher", warmup=True),
)}
ALL_PHASE_NAMES = tuple(PHASES)   # every phase a config may list, in the order they run (dependency order)
PHASE_NAMES = ("teacher", "student_ce", "student_kd", "student_kd_ema")   # the original's study
MEAN_TEACHER = "mean_teacher"     # the mean teacher's report row: the EMA of student_mean_teacher's weights


def sweep_phase(decay: float, warmup: bool) -> Phase:
  """The EMA-sweep variant of student_kd_ema with alpha = `decay` (and the warm-up when `warmup`)."""
  name = f"student_kd_ema{SWEEP_MARK}{decay:g}" + (WARMUP_MARK if warmup else "")
  return Phase(name, "student", "kd_ema", teacher_decay=float(decay), warmup=bool(warmup))


def phase(name: str) -> Phase:
  """The Phase of a name of the table or of an EMA-sweep variant; KeyError if neither."""
  if name in PHASES:
    return PHASES[name]
  base, mark, rest = name.partition(SWEEP_MARK)
  if base == "student_kd_ema" and mark:
    warmup = rest.endswith(WARMUP_MARK)
    try:
      variant = sweep_phase(float(rest.removesuffix(WARMUP_MARK)), warmup)
    except ValueError:
      raise KeyError(name) from None
    if variant.name == name:
      return variant
  raise KeyError(name)


def sweep_phases(decays, warmups, plain: tuple[float, bool] | None) -> list[Phase]:
  """The variants of decays x warmups (config ema.sweep x ema.sweep_warmup), less `plain`, the (alpha, warm-up)
  that student_kd_ema already is (None when the study has no student_kd_ema)."""
  return [sweep_phase(decay, warmup) for decay in decays for warmup in warmups
          if (float(decay), bool(warmup)) != plain]


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


def models_of(phase_name: str, student_decay: float) -> list[Model]:
  """The models `phase_name` reports, its own first."""
  spec = phase(phase_name)
  tracked = [Model(spec.name, spec.name, spec.net, "params")]
  if spec.step_kind == "kd_ema":
    tracked.append(Model(TEACHER_EMA + spec.variant, spec.name, "teacher", "teacher_params"))
  if spec.step_kind == "mean_teacher":
    tracked.append(Model(MEAN_TEACHER, spec.name, spec.teacher_net, "teacher_params"))
  if spec.net == "student" and student_decay > 0:
    tracked.append(Model(spec.name + EMA_WEIGHTS_SUFFIX, spec.name, spec.net, "ema_params"))
  return tracked


def model(name: str) -> Model:
  """The Model of a report row's name (e.g. "teacher_ema", "student_kd (EMA weights)",
  "teacher_ema@0.99"); KeyError if none."""
  phase_name = name.removesuffix(EMA_WEIGHTS_SUFFIX)
  if phase_name.startswith(TEACHER_EMA):
    phase_name = "student_kd_ema" + phase_name[len(TEACHER_EMA):]
  elif phase_name == MEAN_TEACHER:
    phase_name = "student_mean_teacher"
  try:
    candidates = models_of(phase_name, student_decay=1.0)
  except KeyError:
    raise KeyError(name) from None
  for candidate in candidates:
    if candidate.name == name:
      return candidate
  raise KeyError(name)


# Every model of the table that has a checkpoint folder, in the order runs list them (inspection, reports).
MODEL_ORDER = tuple(m.name for phase_name in ALL_PHASE_NAMES for m in models_of(phase_name, 0.0))
