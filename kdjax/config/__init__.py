"""What a study's config is: its fields and defaults (defaults.py), the checks of its values (validation.py), the
shipped configs and finding one by name (lookup.py, shipped/), and the nets it describes (nets.py).

A config file of your own starts from `kdjax.config.default_config()` (as the shipped ones do) and changes a few
fields.
"""

from kdjax.config.defaults import default_config

__all__ = ["default_config"]  # the one name a config file needs
