"""The nets a config describes: kdjax.nets' Flax modules built from config.model.* and config.speed.*, also
for a config.json written by an older kdjax (a field it lacks means what it meant then)."""

from kdjax.config import defaults
from kdjax.nets import models


def from_config(net: str, num_classes: int, config) -> models.ConvNet:
  """The study's `net` ("teacher" or "student") as `config` (model.*, speed.*) builds it. A field that an older
  workdir's config lacks means what it meant then (defaults.ABSENT_MEANS: speed.{net}_conv "xla")."""
  speed = config.get("speed") or {}
  conv_field = f"{net}_conv"
  return models.MODEL_FACTORIES[net](num_classes, config.model.activation, config.model.init,
      pool=speed.get("pool", "fast"),
      conv=speed.get(conv_field, defaults.ABSENT_MEANS[f"speed.{conv_field}"]))
