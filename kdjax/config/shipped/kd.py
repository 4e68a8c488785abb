"""The original's KD study: teacher (labels), student (labels), student (KD from the frozen teacher).

    python -m kdjax.main --config kd.py --workdir runs/kd

Three report rows: teacher, student_ce, student_kd. About 2 minutes on a 2-core CPU on the embedded digits.
Real study: --config.data.name=tiny_imagenet --config.data.manual_dir=DIR.
"""

from kdjax.config import defaults as config_lib


def get_config():
  config = config_lib.default_config()
  config.phases = ("teacher", "student_ce", "student_kd")
  return config
