"""A data config for one source, as the data tests build it."""

from kdjax.config import defaults as config_lib


def data_config(name, manual_dir="", data_dir="", **overrides):
  config = config_lib.default_config()
  config.data.name = name
  config.data.manual_dir = str(manual_dir)
  config.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    config.data[key] = value
  return config.data
