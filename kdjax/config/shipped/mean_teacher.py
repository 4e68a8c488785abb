"""A working EMA beside the original's: the mean teacher (Tarvainen & Valpola 2017), on top of the whole study.

    python -m kdjax.main --config mean_teacher.py --workdir runs/mean_teacher

ema.py's config (its phases, alpha = ema.decay, the students' Polyak EMA) with two changes:
  - the phase student_mean_teacher: the student trained on kd.ce_weight·CE + kd.kd_weight·KD toward a teacher of
    its own architecture whose every tensor is an EMA of the student's weights (updated after each step, started
    from the student's initial weights, with its own warm-up alpha_t = min(1 - 1/(t + 1), ema.decay): without it,
    at alpha = 0.999, the teacher still holds 0.999^230 = 79 % of the random initial weights after digits' 230
    updates, and measured at chance); rows student_mean_teacher and mean_teacher (that teacher);
  - kd.ce_weight = 1: with KD alone the mean teacher has no signal (validation refuses 0). Every KD phase of this
    config takes the same CE + KD objective, so student_kd, student_kd_ema and student_mean_teacher differ only in
    their teacher: the trained TeacherNet frozen, moved by the original's EMA, or the student's own average.
    student_ce and the teacher compute what ema.py's do.
Reuse a trained teacher: --config.teacher.checkpoint=WORKDIR_OF_AN_EMA_RUN. Real study:
--config.data.name=tiny_imagenet --config.data.manual_dir=DIR.
"""

from kdjax.config.shipped import ema


def get_config():
  config = ema.get_config()
  config.phases = tuple(config.phases) + ("student_mean_teacher",)
  config.kd.ce_weight = 1.0
  return config
