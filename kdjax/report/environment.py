"""Where a run ran, and what decides its bits: report.json's `environment`.

The same config and seed give the same numbers when these are the same too: the CPU's instruction set (oneDNN and
XLA pick their float32 kernels per instruction set, and each kernel sums in its own order), the thread counts, the
conv path and float64 mode. Across CPUs the sums move by rounding and training amplifies that, so two runs on
different CPUs agree to within their noise, not bit for bit. `kdjax.cli.inspection A --compare B` names which of
these fields differ between two workdirs.
"""

import os
import platform

import flax
import jax

from kdjax.nets import onednn_conv
from kdjax.training import host_memory

# CPU flags that choose kernels, lowest to highest (Linux /proc/cpuinfo names)
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile")
# oneDNN's dnnl_cpu_isa_t (oneDNN 3.2's dnnl_types.h)
ONEDNN_ISAS = {0x0: "default", 0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xf: "avx2_vnni", 0x1f: "avx2_vnni_2",
               0x27: "avx512_core", 0x67: "avx512_core_vnni", 0xe7: "avx512_core_bf16", 0x1ef: "avx512_core_fp16",
               0xfef: "avx512_core_amx", 0x1fef: "avx512_core_amx_fp16"}
# Environment variables that change kernels, threads or precision: recorded when set
BIT_DECIDING_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "XLA_FLAGS", "JAX_ENABLE_X64",
                          "JAX_DEFAULT_MATMUL_PRECISION", "OMP_NUM_THREADS", "KDJAX_ONEDNN_THREADS", "KDJAX_ONEDNN",
                          "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _cpuinfo() -> dict[str, str]:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  try:
    text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
  except OSError:
    return {}
  fields = {}
  for line in text.split("\n\n")[0].splitlines():
    key, _, value = line.partition(":")
    fields[key.strip()] = value.strip()
  return fields


def isa_class(flags) -> str:
  """The kernel class a CPU with `flags` gets: "avx512", "avx2", "avx" or "sse" (AVX-512 counts from avx512f)."""
  flags = set(flags)
  if "avx512f" in flags:
    return "avx512"
  if "avx2" in flags:
    return "avx2"
  return "avx" if "avx" in flags else "sse"


def cpu() -> dict:
  """The CPU: model name, vendor/family/model/stepping, the kernel-choosing flags it has, and its class."""
  info = _cpuinfo()
  flags = set(info.get("flags", "").split())
  return {"model": info.get("model name") or platform.processor() or platform.machine(),
          "vendor": info.get("vendor_id", ""),
          "family_model_stepping": "/".join(info.get(key, "?") for key in ("cpu family", "model", "stepping")),
          "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
          "isa_class": isa_class(flags) if flags else platform.machine(),
          "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def xla_max_isa() -> str:
  """XLA:CPU's instruction-set cap from XLA_FLAGS' --xla_cpu_max_isa ("" when not capped: the host's features)."""
  for word in os.environ.get("XLA_FLAGS", "").split():
    if word.startswith("--xla_cpu_max_isa="):
      return word.split("=", 1)[1]
  return ""


def xla(cores_usable: int) -> dict:
  """XLA's side: the backend, its instruction-set cap, its thread pool's size (one thread a usable core) and
  float64 mode."""
  return {"backend": jax.default_backend(), "max_isa": xla_max_isa() or "host (no cap)",
          "intra_op_threads": cores_usable, "x64": bool(jax.config.jax_enable_x64)}


def onednn_isa() -> str:
  """oneDNN's effective instruction set (dnnl_get_effective_cpu_isa: the CPU's, capped by ONEDNN_MAX_CPU_ISA)."""
  import ctypes   # the extension has loaded libdnnl.so.3 already; dlopen by soname returns that library
  library = ctypes.CDLL("libdnnl.so.3")
  library.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
  value = library.dnnl_get_effective_cpu_isa()
  return ONEDNN_ISAS.get(value, hex(value))


def onednn(batch: int | None = None, image_shape=None) -> dict:
  """oneDNN's side where the extension is loaded: version, effective ISA, threads (and which setting gave them),
  OpenMP's wait policy, and the kernels it picks for a 12->12 conv at the run's batch and image size (their names
  carry the ISA, e.g. "brg:avx2")."""
  if not onednn_conv.available():
    return {"loaded": False, "why_not": onednn_conv.unavailable_reason()}
  described = {"loaded": True, "version": onednn_conv.version(), "effective_isa": onednn_isa(),
               "threads": onednn_conv.threads(), "threads_from": onednn_conv.thread_setting()[1],
               "wait_policy": onednn_conv.wait_policy()}
  if batch and image_shape:
    height, width = int(image_shape[0]), int(image_shape[1])
    described["kernels"] = {kind: onednn_conv.implementation(kind, int(batch), height, width, 12, 12)
                            for kind in onednn_conv.KINDS}
  return described


def environment(data_parallel: int = 1, batch: int | None = None, image_shape=None) -> dict:
  """report.json's environment (without the conv paths, which the config decides: kdjax.config.nets.describe).

  mesh.data: the data-parallel device count D (kdjax/training/mesh.py); processes: the hosts'."""
  host = cpu()   # /proc/cpuinfo read once
  return {"mesh": {"data": data_parallel}, "processes": jax.process_count(), "jax": jax.__version__,
          "flax": flax.__version__, "backend": jax.default_backend(),
          "devices": [str(device) for device in jax.devices()], "python": platform.python_version(),
          "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
          "cpu": host, "xla": xla(host["cores_usable"]), "onednn": onednn(batch, image_shape),
          "variables": {name: os.environ[name] for name in BIT_DECIDING_VARIABLES if name in os.environ},
          "host_malloc": host_memory.describe()}
