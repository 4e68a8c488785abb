"""The original's teacher -> student study: teacher on labels, student on labels, student by KD.

    python -m kdjax.main --config default.py --workdir runs/default

Runs the phases teacher, student_ce, student_kd on the embedded digits set (kd.py is the same study;
ema.py adds the original's EMA loop). The run time per CPU class: README's quick check;
--config.epochs=2 for a quick look.

Optimizer: Adam, lr 1e-3, no weight decay. The seed names none. Its nets have no activations and PyTorch's
default initialisation (U(+-1/sqrt(fan_in))), which shrinks the signal through the 12 convs. Measured on digits,
10 epochs (docs/results.md, "Choosing the optimizer"): Adam from the original's init trains the teacher to 97.2 % top-1, while
SGD-momentum 0.9 at lr 0.01 from the same init leaves it at 23.6 %; SGD trains it (97.5 %) from
model.init="lecun_normal".
"""

from kdjax.config import defaults as config_lib


def get_config():
  return config_lib.default_config()
