"""kdjax/training/host_memory.py: with speed.host_malloc="tuned" glibc serves large requests from the heap and keeps
them, instead of an mmap per request (XLA:CPU's step buffers). The setting is process-wide, so the allocator is
probed in a fresh process."""

import platform
import subprocess
import sys

import pytest

from kdjax.config import validation as config_validation
from kdjax.errors import ConfigError
from tests.conftest import tiny_config

# In a fresh process: how many more chunks glibc holds in mmaps (mallinfo2().hblks) while 64 MiB are allocated, and
# whether the memory of a second request after a free comes back without new page faults (minor faults counted);
# then the same after tune(), on the main thread and on a thread started afterwards (as XLA's workers are).
_PROBE = """
import ctypes, json, resource, sys, threading
from kdjax.training import host_memory
class MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = MallInfo2
def touch_twice(size, out):
  faults = []
  for _ in range(2):
    before, chunks = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, libc.mallinfo2().hblks
    pointer = libc.malloc(size)
    ctypes.memset(pointer, 1, size)
    mapped = libc.mallinfo2().hblks - chunks
    libc.free(ctypes.c_void_p(pointer))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  out.append((mapped, faults[1]))
def on_a_new_thread(size):
  out = []
  thread = threading.Thread(target=touch_twice, args=(size, out))
  thread.start(); thread.join()
  return out[0]
result = {"system": [], "tuned": []}
touch_twice(64 << 20, result["system"])
result["line"] = host_memory.tune()
touch_twice(64 << 20, result["tuned"])
result["tuned_thread"] = on_a_new_thread(80 << 20)   # more than a thread's own arena could hold
result["describe"] = host_memory.describe()
print(json.dumps(result))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc's malloc only")
def test_tuned_glibc_serves_large_requests_from_the_heap_and_keeps_them():
  import json
  result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  probe = json.loads(result.stdout)
  pages = (64 << 20) // 4096
  [(mapped, faults)] = probe["system"]
  assert mapped == 1 and faults >= pages // 2          # glibc's default: an mmap per request, faulted in again
  [(mapped, faults)] = probe["tuned"]
  assert mapped == 0 and faults < pages // 16          # from the heap, and the freed memory was kept
  mapped, faults = probe["tuned_thread"]               # a thread started after tune(): the same heap
  assert mapped == 0 and faults < pages // 16
  assert probe["line"] == probe["describe"] and "one arena, no mmap, trim threshold 1 GiB" in probe["line"]


def test_a_bad_value_names_the_field():
  config = tiny_config(**{"speed.host_malloc": "jemalloc"})
  with pytest.raises(ConfigError, match=r"^speed\.host_malloc must be 'tuned' or 'system', got 'jemalloc'$"):
    config_validation.validate(config)


# In a fresh process with tune() in force: 256 MiB malloc'd, written and freed stay resident (the heap keeps them);
# release() gives them back.
_RELEASE_PROBE = """
import ctypes
from kdjax.training import host_memory
host_memory.tune()
def rss_mib():
  return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
pointer = libc.malloc(size)
ctypes.memset(pointer, 1, size)
libc.free(ctypes.c_void_p(pointer))
kept = rss_mib()
host_memory.release()
print(kept, rss_mib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_release_gives_back_what_the_tuned_heap_kept():
  result = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  kept, released = map(int, result.stdout.split())
  assert kept - released > 200, (kept, released)   # of the 256 MiB freed, nearly all leave the process
