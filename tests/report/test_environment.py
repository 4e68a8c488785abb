"""report.json's environment (kdjax/report/environment.py): the CPU class and instruction sets that
decide the bits."""

import json
import os
import subprocess
import sys

import pytest

from kdjax.nets import onednn_conv
from kdjax.report import environment


def test_isa_class_takes_the_highest_kernel_class():
  assert environment.isa_class({"sse4_2", "avx", "avx2", "fma"}) == "avx2"
  assert environment.isa_class({"avx2", "avx512f", "avx512bw"}) == "avx512"
  assert environment.isa_class({"avx"}) == "avx"
  assert environment.isa_class({"sse4_2"}) == "sse"


def test_cpu_record_matches_proc_cpuinfo():
  if not os.path.exists("/proc/cpuinfo"):
    pytest.skip("no /proc/cpuinfo")
  flags = set(environment._cpuinfo().get("flags", "").split())
  cpu = environment.cpu()
  assert cpu["isa_class"] == environment.isa_class(flags)
  assert set(cpu["isa_flags"]) == flags & set(environment.ISA_FLAGS)
  assert cpu["cores_usable"] == len(os.sched_getaffinity(0))


_PROBE = ("import json; from kdjax.report import environment; "
          "print(json.dumps(environment.environment(1, 8, (16, 16, 3))))")


def _environment_in_child(**variables) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **variables)
  done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not onednn_conv.available(), reason=onednn_conv.unavailable_reason() or "no oneDNN")
def test_capped_instruction_sets_are_recorded_as_the_kernels_ran():
  # ONEDNN_MAX_CPU_ISA=AVX below every x86-64 CPU this project meets (AVX2 or AVX-512): oneDNN's effective ISA and
  # its kernels' names say avx, not the CPU's own class; XLA's cap and float64 mode are recorded with it.
  capped = _environment_in_child(ONEDNN_MAX_CPU_ISA="AVX", XLA_FLAGS="--xla_cpu_max_isa=AVX", JAX_ENABLE_X64="1")
  assert capped["onednn"]["effective_isa"] == "avx"
  assert capped["onednn"]["threads_from"] and capped["onednn"]["wait_policy"]   # threads and OpenMP's waiting
  assert not any("avx2" in name or "avx512" in name for name in capped["onednn"]["kernels"].values())
  assert capped["xla"]["max_isa"] == "AVX" and capped["xla"]["x64"] is True
  assert capped["variables"] == {"ONEDNN_MAX_CPU_ISA": "AVX", "XLA_FLAGS": "--xla_cpu_max_isa=AVX",
                                 "JAX_ENABLE_X64": "1"}
  plain = environment.environment(1, 8, (16, 16, 3))
  isa = plain["onednn"]["effective_isa"]
  assert isa.startswith({"avx512": "avx512", "avx2": "avx2"}.get(plain["cpu"]["isa_class"], isa))
  assert plain["xla"]["max_isa"] == (environment.xla_max_isa() or "host (no cap)")
