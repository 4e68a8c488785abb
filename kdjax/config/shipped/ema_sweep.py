"""The original's EMA, understood: a sweep of alpha with and without warm-up, and why it collapses.

    python -m kdjax.main --config ema_sweep.py --workdir runs/ema_sweep [--config.num_seeds=3]

The whole study (ema.py) plus one student_kd_ema phase per (alpha, warm-up) pair, alpha in
{0.9, 0.99, 0.999, 0.9999} and the mean-teacher warm-up off and on, all distilled from the same trained
teacher: rows student_kd_ema@<alpha>[+warmup] and teacher_ema@<alpha>[+warmup], the plot ema_sweep.png
(alpha = 1 is plain KD), and per EMA-updated teacher the collapse diagnostics (ema_collapse.png: distance from
the trained teacher, soft-target entropy, KD loss, top-1). The students' own weight averages (Polyak, the EMA
people usually mean; ema.student_decay = 0.99) are reported beside them as "... (EMA weights)".
Real study: --config.data.name=tiny_imagenet --config.data.manual_dir=DIR.
"""

from kdjax.config.shipped import ema


def get_config():
  config = ema.get_config()
  config.ema.sweep = (0.9, 0.99, 0.999, 0.9999)
  config.ema.sweep_warmup = (False, True)
  return config
