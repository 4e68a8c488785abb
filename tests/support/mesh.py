"""A tiny study run in its own process (tests/training/test_mesh.py): `python -m tests.support.mesh WORKDIR DEVICES
[COORDINATOR NUM_PROCESSES PROCESS_ID]` with DEVICES forced host devices (per process); several processes join
through jax.distributed with CPU collectives over gloo."""

import os
import sys


def config(**overrides):
  from tests.conftest import tiny_config
  # 238 training rows: the last batch of each epoch holds 14 rows, padded to 32 over several devices.
  return tiny_config(**{"phases": ("teacher", "student_kd", "student_kd_ema"), "epochs": 1,
                        "data.max_train_examples": 238, "log_every_steps": 1, "ema.student_decay": 0.9,
                        "ema.diagnostics_per_decade": 8, **overrides})


def main(argv):
  workdir, devices = argv[1], int(argv[2])
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={devices}").strip()
  import jax
  jax.config.update("jax_platforms", "cpu")
  overrides = {}
  if len(argv) > 3:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    overrides = {"distributed.coordinator_address": argv[3], "distributed.num_processes": int(argv[4]),
                 "distributed.process_id": int(argv[5])}
  from kdjax.study import experiment
  experiment.train_and_evaluate(config(**overrides), workdir)


if __name__ == "__main__":
  main(sys.argv)
