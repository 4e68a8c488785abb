"""The seed's teacher -> student study: teacher on labels, student on labels, student by KD.

    python -m kdjax.main --config configs/default.py --workdir runs/default

Runs the phases teacher, student_ce, student_kd on the embedded digits set (configs/kd.py is the same study;
configs/ema.py adds the seed's EMA loop). About 2 minutes on a 2-core CPU; --config.epochs=2 for a quick look.

Optimizer: Adam, lr 1e-3, no weight decay. The seed names none. Its nets have no activations and PyTorch's
default initialisation (U(+-1/sqrt(fan_in))), which shrinks the signal through the 12 convs; Adam's per-tensor
scale invariance trains it (digits, 10 epochs: ~98 % top-1), while SGD-momentum 0.01 from the same init
stays at chance (~9 %). SGD trains well from model.init="lecun_normal".
"""

from kdjax import config as config_lib


def get_config():
  return config_lib.default_config()
