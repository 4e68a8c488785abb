"""The errors kdjax raises on purpose. Each message is one line that names the field, file or path at fault;
the entry points print it as `PROG: error: MESSAGE` and exit with the code `kdjax.cli.exits` gives its type
(2: what the user asked for cannot run; 1: a run that broke). This module imports nothing, so every layer can
raise them."""


class ConfigError(ValueError):
  """A config value that cannot run; the message is one line that names the field."""


class DataError(ValueError):
  """A data set that cannot be loaded; the message is one line naming the field or path."""


class DivergenceError(RuntimeError):
  """A non-finite training loss."""


class StalledTrainingError(DivergenceError):
  """A distillation epoch that learned nothing: its parameters did not move, or its loss was 0 on every step (e.g.
  a KD loss that float32 rounds to 0 at a large kd.temperature). Not a result either: exit 1, as a divergence."""


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be found, read or written; the message is one line naming the path."""


class CorruptCheckpointError(CheckpointError):
  """A saved step whose content is not what was saved (a hash differs, a file is missing or truncated): an
  earlier intact step, where one exists, can stand in for it (study.resume.read_saved_phases)."""


class WriteError(RuntimeError):
  """A file of the run that cannot be written (disk full, read-only); one line naming the path."""


class TeacherCheckpointError(CheckpointError, ConfigError):
  """teacher.checkpoint names a checkpoint that cannot be used (missing, corrupt, not a teacher's, not fitting this
  run): a CheckpointError that is also a ConfigError, since the value the user gave is wrong (exit 2, as for any
  config value; a run's own checkpoints that break are exit 1)."""
