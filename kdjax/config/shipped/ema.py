"""The whole study: teacher, student on labels, student by KD, and student by KD with the original's EMA.

    python -m kdjax.main --config ema.py --workdir runs/ema

Five report rows: teacher, student_ce, student_kd, student_kd_ema, and teacher_ema (the teacher copy that the
seed's EMA pulled toward the student every step, alpha = ema.decay), with the collapse diagnostics of
teacher_ema (ema_collapse.png). Beside them, the EMA people usually mean: each student's own averaged weights
(Polyak, ema.student_decay = 0.99), rows "... (EMA weights)"; --config.ema.student_decay=0 drops them.
50 s (AVX-512) to 114 s (AVX2) on a 2-core AMD EPYC on the embedded digits (README); --config.epochs=2 for a quick look;
--config.num_seeds=5 for mean ± std and paired differences over seeds.
Real study: --config.data.name=tiny_imagenet --config.data.manual_dir=DIR.
"""

from kdjax.config import defaults as config_lib
from kdjax import phases


def get_config():
  config = config_lib.default_config()
  config.phases = phases.PHASE_NAMES
  config.ema.student_decay = 0.99
  return config
