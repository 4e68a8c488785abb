"""kdjax: the seed's teacher/student knowledge-distillation study, rebuilt in JAX/Flax."""

__version__ = "0.1.0"
