"""The original's KD study: teacher (labels), student (labels), student (KD from the frozen teacher).

    python -m kdjax.main --config kd.py --workdir runs/kd

Three report rows: teacher, student_ce, student_kd, and the students' "(EMA weights)" rows. Shorter than ema.py
(50 s on an AVX-512, 114 s on an AVX2 2-core AMD EPYC: README).
Real study: --config.data.name=tiny_imagenet --config.data.manual_dir=DIR.
"""

from kdjax.config import defaults as config_lib


def get_config():
  config = config_lib.default_config()
  config.phases = ("teacher", "student_ce", "student_kd")
  return config
