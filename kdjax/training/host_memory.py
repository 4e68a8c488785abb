"""The host allocator under XLA:CPU's buffers.

XLA:CPU takes a step's buffers (its activations: 25 MB a tensor at batch 128, 64x64x12, float32) from malloc and
frees them when the step ends. glibc serves every request above its mmap threshold (32 MiB at most) with a fresh
mmap and gives it back with munmap, so each step faults all of that memory in again, page by page, and the kernel
zeroes it: measured on the 2-core AMD EPYC, a student step spends a third to a half of its time so (see
docs/speed.md). `tune()` keeps freed memory in the process for the next step:

    mallopt(M_MMAP_MAX, 0)            no request is served by mmap: all come from the heap
    mallopt(M_TRIM_THRESHOLD, 1 GiB)  free memory at the top of the heap is kept up to 1 GiB, not given back

It changes no number a run computes, only where its memory comes from; the process keeps its peak heap until it
ends (a training process's memory is its peak anyway). glibc only: elsewhere `tune()` changes nothing and says so.
The setting is the process's, for every later allocation; `describe()` says what is in force.
"""

import ctypes
import platform

M_TRIM_THRESHOLD = -1      # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30   # bytes

_in_force: list[str] = []


def tune() -> str:
  """Makes glibc keep freed memory for reuse (the module docstring); returns describe()'s line. Idempotent."""
  if not _in_force:
    library, version = platform.libc_ver()
    if library != "glibc":
      _in_force.append(f"{library or 'this C library'}'s malloc, unchanged (kdjax tunes glibc's only)")
    else:
      libc = ctypes.CDLL(None)
      applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
      _in_force.append(f"glibc {version} malloc, no mmap, trim threshold {TRIM_THRESHOLD >> 30} GiB" if applied
                       else f"glibc {version} malloc, unchanged (mallopt refused)")
  return _in_force[0]


def describe() -> str:
  """The allocator setting in force in this process, as report.json's environment records it."""
  return _in_force[0] if _in_force else "the C library's default malloc"
