"""Optimizers, built to match their PyTorch namesakes (see parity/ for the checks).

  sgd:   PyTorch SGD(lr, momentum, weight_decay, nesterov): g += wd*p; buf = momentum*buf + g; p -= lr*buf
  adam:  PyTorch Adam(lr, betas, eps, weight_decay): L2 (g += wd*p) then Adam
  adamw: PyTorch AdamW(lr, betas, eps, weight_decay): decoupled decay, p -= lr*(adam_update + wd*p)

Schedules: "constant" (the original's: none named) or "cosine" (to 0 over the phase's steps).
The fields are the config's optimizer.* (`OptimizerConfig(**config.optimizer)`, as study/builder.py makes them).
"""

import dataclasses

import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """An optimizer's fields (config optimizer.*; sgd reads momentum and nesterov, adam and adamw b1, b2, eps)."""

  name: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8


def learning_rate(opt_config: OptimizerConfig, total_steps: int) -> optax.Schedule | float:
  if opt_config.schedule == "constant":
    return opt_config.learning_rate
  if opt_config.schedule == "cosine":
    return optax.cosine_decay_schedule(opt_config.learning_rate, max(total_steps, 1))
  raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {opt_config.schedule!r}")


def make_optimizer(opt_config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """The optimizer named by optimizer.name, for a phase of `total_steps` steps."""
  lr = learning_rate(opt_config, total_steps)
  name, wd = opt_config.name, opt_config.weight_decay
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(lr, momentum=opt_config.momentum or None,
                                 nesterov=opt_config.nesterov))
  if name == "adam":
    return optax.chain(optax.add_decayed_weights(wd),
                       optax.adam(lr, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps))
  if name == "adamw":
    return optax.adamw(lr, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps, weight_decay=wd)
  raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {name!r}")
