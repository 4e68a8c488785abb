"""The host allocator under XLA:CPU's buffers.

XLA:CPU mallocs a step's buffers and frees them when the step ends, on its worker threads; glibc serves large
requests with mmap and gives them back, so every step faults its memory in again (docs/log/2026-12-02-speed-kept-heap.md).
`tune()` keeps freed memory in the process for the next step:

    mallopt(M_ARENA_MAX, 1)           threads that have not allocated yet share the heap's one arena
    mallopt(M_MMAP_MAX, 0)            no request is served by mmap: all come from the heap
    mallopt(M_TRIM_THRESHOLD, 1 GiB)  free memory at the top of the heap is kept up to 1 GiB, not given back

Call it before JAX starts its CPU backend (kdjax's command lines do, first thing): a thread that already holds an
arena keeps it. It changes no number a run computes; the process keeps its peak heap until it ends. glibc only:
elsewhere `tune()` changes nothing and says so; `describe()` says what is in force.
"""

import ctypes
import functools
import platform

M_TRIM_THRESHOLD = -1      # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30   # bytes
SETTINGS = ("tuned", "system")   # config speed.host_malloc: tune() first, or the C library as it is

_in_force: list[str] = []


@functools.cache
def _libc() -> tuple[str, str]:
  """(library, version) of this process's C library (platform.libc_ver reads the executable: once)."""
  return platform.libc_ver()


def tune() -> str:
  """Makes glibc keep freed memory for reuse (the module docstring); returns describe()'s line. Idempotent."""
  if not _in_force:
    library, version = _libc()
    if library != "glibc":
      _in_force.append(f"{library or 'this C library'}'s malloc, unchanged (kdjax tunes glibc's only)")
    else:
      libc = ctypes.CDLL(None)
      applied = all(libc.mallopt(parameter, value) == 1 for parameter, value in
                    ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
      _in_force.append(f"glibc {version} malloc, one arena, no mmap, trim threshold {TRIM_THRESHOLD >> 30} GiB"
                       if applied else f"glibc {version} malloc, unchanged (mallopt refused)")
  return _in_force[0]


def release() -> None:
  """Gives the heap's free pages back to the system (glibc's malloc_trim(0)), so that what one stage of a run freed
  (the data reader's buffers, a phase's evaluations) is not resident through the next and the run's peak is its
  largest stage's, not their sum. The study calls it before each phase (the first one's frees the set-up's and the
  resume's buffers), before each epoch's evaluation (whose buffers would otherwise land beside the epoch's freed
  step buffers) and before and after each point of a kd_ema phase's collapse diagnostics (the probe's forwards
  between steps); a few milliseconds, and the next step faults its buffers in again; changes no number. Nothing
  outside glibc."""
  if _libc()[0] == "glibc":
    ctypes.CDLL(None).malloc_trim(0)


def describe() -> str:
  """The allocator setting in force in this process, as report.json's environment records it."""
  return _in_force[0] if _in_force else "the C library's default malloc"
