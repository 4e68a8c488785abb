"""The host allocator under XLA:CPU's buffers.

XLA:CPU takes a step's buffers (its activations: 25 MB a tensor at batch 128, 64x64x12, float32) from malloc and
frees them when the step ends, on one of its worker threads. glibc serves every request above its mmap threshold
(32 MiB at most) with a fresh mmap, and a worker thread's arena (64 MiB at most) every request it cannot hold, and
gives them back with munmap, so each step faults all of that memory in again, page by page, and the kernel zeroes
it (the teacher step's 110 MB temporary buffer: 28,000 page faults a step). `tune()` keeps freed memory in the
process for the next step:

    mallopt(M_ARENA_MAX, 1)           threads that have not allocated yet share the heap's one arena
    mallopt(M_MMAP_MAX, 0)            no request is served by mmap: all come from the heap
    mallopt(M_TRIM_THRESHOLD, 1 GiB)  free memory at the top of the heap is kept up to 1 GiB, not given back

Call it before JAX starts its CPU backend (kdjax's command lines do, first thing): a thread that already holds an
arena of its own keeps it, and XLA's workers take theirs at their first allocation. It changes no number a run
computes, only where its memory comes from; the process keeps its peak heap until it ends (a training process's
memory is its peak anyway). glibc only: elsewhere `tune()` changes nothing and says so. The setting is the
process's, for every later allocation; `describe()` says what is in force. Measured: docs/speed.md.
"""

import ctypes
import platform

M_TRIM_THRESHOLD = -1      # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30   # bytes
SETTINGS = ("tuned", "system")   # config speed.host_malloc: tune() first, or the C library as it is

_in_force: list[str] = []


def tune() -> str:
  """Makes glibc keep freed memory for reuse (the module docstring); returns describe()'s line. Idempotent."""
  if not _in_force:
    library, version = platform.libc_ver()
    if library != "glibc":
      _in_force.append(f"{library or 'this C library'}'s malloc, unchanged (kdjax tunes glibc's only)")
    else:
      libc = ctypes.CDLL(None)
      applied = all(libc.mallopt(parameter, value) == 1 for parameter, value in
                    ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
      _in_force.append(f"glibc {version} malloc, one arena, no mmap, trim threshold {TRIM_THRESHOLD >> 30} GiB"
                       if applied else f"glibc {version} malloc, unchanged (mallopt refused)")
  return _in_force[0]


def describe() -> str:
  """The allocator setting in force in this process, as report.json's environment records it."""
  return _in_force[0] if _in_force else "the C library's default malloc"
