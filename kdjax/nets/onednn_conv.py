"""kdjax's 3x3 SAME convolutions on CPU in oneDNN, called from jitted code through JAX's typed XLA FFI.

    y = conv(x, k, b):  y[n, h, w, d] = b[d] + sum_{i, j, c} x[n, h+i-1, w+j-1, c] * k[i, j, c, d]  (0 off the image)

x NHWC float32, k HWIO float32 (nn.Conv's parameters), b [D]. The forward, the input gradient
dx = sum_{i, j, d} dy[n, h-i+1, w-j+1, d] * k[i, j, c, d] and the weight gradients dk[i, j, c, d] =
sum_{n, h, w} x[n, h+i-1, w+j-1, c] * dy[n, h, w, d], db[d] = sum_{n, h, w} dy[n, h, w, d] are oneDNN's
convolution forward, backward-data and backward-weights primitives (kdjax/nets/_onednn.cc, built at install by kdjax/nets/onednn_build.py),
joined by a `jax.custom_vjp`. The same function as `lax.conv_general_dilated`, float32 sums in another order.

This module also loads the extension for the 2x2 max-pools that follow these convs (kdjax.nets.onednn_pool).

The extension is optional (no compiler, no x86_64, ...): `unavailable_reason()` says why it is missing, and
config speed.conv "auto" then keeps the convolutions in XLA (kdjax.config.nets.conv_engine).

Threads: the extension runs its calls one at a time on one thread of its own, so oneDNN has one OpenMP team and it
and XLA's pool never compute at once. `set_threads` sets oneDNN's count (default: KDJAX_ONEDNN_THREADS, else
OMP_NUM_THREADS, else the cores this process may use; not a whole number >= 1: a ConfigError). Why and what was
measured: docs/speed.md#the-onednn-extension.
"""

import ctypes
import functools
import importlib.machinery
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import errors

ENV_DISABLE = "KDJAX_ONEDNN"   # "0": behave as if the extension were not built (tests, comparisons); "1" or unset: use it
ENV_THREADS = "KDJAX_ONEDNN_THREADS"   # oneDNN's OpenMP threads (default: OMP_NUM_THREADS, else the cores this process may use)
STATUS_FILE = "_onednn.unavailable"   # written at install when the extension could not be built
TARGETS = {"forward": "kdjax_onednn_conv_forward", "backward_data": "kdjax_onednn_conv_backward_data",
           "backward_weights": "kdjax_onednn_conv_backward_weights"}
POOL_TARGETS = {"forward": "kdjax_onednn_pool_forward", "backward": "kdjax_onednn_pool_backward"}  # onednn_pool.py
KINDS = {"forward": 0, "backward_data": 1, "backward_weights": 2}
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")   # the user's choice of GNU OpenMP's wait: honoured
_WAIT_POLICY = [""]   # what _load_passive did
FUNCTIONS = ("kdjax_onednn_set_threads", "kdjax_onednn_get_threads", "kdjax_onednn_impl_info",
             "kdjax_onednn_cache_size", "kdjax_onednn_scratchpad_bytes", "kdjax_onednn_version")   # ctypes entries


def _library_path() -> pathlib.Path | None:
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    if (here / f"_onednn{suffix}").exists():
      return here / f"_onednn{suffix}"
  return None


@functools.lru_cache(maxsize=None)
def _load() -> tuple[ctypes.CDLL | None, str]:
  """(the loaded extension with its FFI targets registered, "") or (None, why not)."""
  switch = os.environ.get(ENV_DISABLE, "").strip()
  if switch not in ("", "0", "1"):
    raise errors.ConfigError(f"environment variable {ENV_DISABLE}={switch!r}: must be 0 (run the convs in XLA) or 1 "
                             f"(use the oneDNN extension where it is built; the same as leaving it unset)")
  if switch == "0":
    return None, f"disabled by {ENV_DISABLE}=0"
  threads = default_threads()   # a bad KDJAX_ONEDNN_THREADS / OMP_NUM_THREADS is refused before anything loads
  if platform.machine().lower() not in ("x86_64", "amd64"):
    return None, f"oneDNN's CPU wheels are x86_64 only, this machine is {platform.machine()}"
  path = _library_path()
  if path is None:
    status = pathlib.Path(__file__).parent / STATUS_FILE
    reason = status.read_text().strip() if status.exists() else "no kdjax/nets/_onednn*.so (the install did not build it)"
    return None, f"oneDNN extension not built: {reason}"
  try:
    library = _load_passive(path)
  except OSError as error:  # libdnnl.so.3 not where the rpath points (onednn-cpu-gomp not installed)
    return None, f"oneDNN extension not loaded: {error}"
  missing = [name for name in (*TARGETS.values(), *POOL_TARGETS.values(), *FUNCTIONS) if not hasattr(library, name)]
  if missing:   # an extension built from another _onednn.cc than this module's
    return None, f"oneDNN extension {path.name} lacks {', '.join(missing)}: rebuild it (pip install -e .)"
  for name in (*TARGETS.values(), *POOL_TARGETS.values()):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
  library.kdjax_onednn_impl_info.argtypes = [ctypes.c_int, *[ctypes.c_int64] * 6, ctypes.c_char_p, ctypes.c_int]
  library.kdjax_onednn_scratchpad_bytes.restype = ctypes.c_int64
  library.kdjax_onednn_set_threads(threads)
  return library, ""


def _load_passive(path: pathlib.Path) -> ctypes.CDLL:
  """ctypes.CDLL(path), GNU OpenMP's wait policy passive unless the user chose one (OMP_WAIT_POLICY, GOMP_SPINCOUNT).

  libgomp reads its environment once, when it is loaded; its default spinning starves the threads it waits for on an
  oversubscribed machine (docs/log/2026-12-02-onednn-threads-under-load.md). The variable is set for the load only,
  so child processes (PyTorch's in kdjax.tools) do not inherit it."""
  chosen = [f"{name}={os.environ[name].strip()}" for name in WAIT_POLICY_VARIABLES if os.environ.get(name, "").strip()]
  if chosen:
    _WAIT_POLICY[0] = ", ".join(chosen)
  elif _libgomp_loaded():
    _WAIT_POLICY[0] = "GNU OpenMP's default (libgomp was loaded before the extension)"
  else:
    os.environ["OMP_WAIT_POLICY"] = "passive"
    try:
      return ctypes.CDLL(str(path))
    finally:
      del os.environ["OMP_WAIT_POLICY"]
      _WAIT_POLICY[0] = "passive"
  return ctypes.CDLL(str(path))


def _libgomp_loaded() -> bool:
  """Whether GNU OpenMP (libgomp.so.1) is in this process already, its wait policy read (True where unknown)."""
  try:
    return "/libgomp.so" in pathlib.Path("/proc/self/maps").read_text()
  except OSError:
    return True


def wait_policy() -> str:
  """oneDNN's OpenMP wait policy as the extension was loaded: "passive" (kdjax's default), the user's
  "OMP_WAIT_POLICY=..." / "GOMP_SPINCOUNT=...", or GNU OpenMP's default where libgomp was loaded first."""
  library()
  return _WAIT_POLICY[0]


def default_threads() -> int:
  """oneDNN's OpenMP threads unless set_threads says otherwise: KDJAX_ONEDNN_THREADS when set (e.g. 1 on a machine
  shared with other busy processes, where a 2-thread team waits at every barrier for a descheduled thread), else
  OMP_NUM_THREADS (its first level) when set, else the cores this process may run on (as XLA's own pool). A value
  that is not a whole number >= 1 raises ConfigError naming the variable."""
  return thread_setting()[0]


def thread_setting() -> tuple[int, str]:
  """(oneDNN's default thread count, where it comes from: "KDJAX_ONEDNN_THREADS=1", "OMP_NUM_THREADS=1" or
  "the cores this process may use")."""
  for name in (ENV_THREADS, "OMP_NUM_THREADS"):
    text = os.environ.get(name, "").strip()
    if not text:
      continue
    first = text.split(",")[0].strip() if name == "OMP_NUM_THREADS" else text   # OpenMP's list: one per level
    if not (first.isascii() and first.isdigit()) or int(first) < 1:
      raise errors.ConfigError(f"environment variable {name}={text!r}: oneDNN's thread count must be a whole number "
                               f">= 1, or {name} unset")
    return int(first), f"{name}={text}"
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  return cores, "the cores this process may use"


def available() -> bool:
  return _load()[0] is not None


def unavailable_reason() -> str:
  """"" when the extension is loaded, else one line saying why not."""
  return _load()[1]


def version() -> str:
  """oneDNN's version, e.g. "3.2.0"."""
  number = library().kdjax_onednn_version()
  return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def library() -> ctypes.CDLL:
  """The loaded extension (kdjax/nets/_onednn.cc: the convs here, the pools in kdjax.nets.onednn_pool); raises
  RuntimeError saying why when it is not available."""
  library, reason = _load()
  if library is None:
    raise RuntimeError(reason)
  return library


def set_threads(threads: int) -> None:
  """OpenMP threads of every later oneDNN call (0: OpenMP's default, OMP_NUM_THREADS or the core count)."""
  library().kdjax_onednn_set_threads(int(threads))


def threads() -> int:
  return library().kdjax_onednn_get_threads()


def implementation(kind: str, batch: int, height: int, width: int, in_channels: int, out_channels: int,
                   kernel_size: int = 3) -> str:
  """oneDNN's implementation name for `kind` ("forward", "backward_data", "backward_weights") at a shape, e.g.
  "brg:avx512_core" or "jit:avx2"; a "gemm" here is the slow im2col fallback."""
  buffer = ctypes.create_string_buffer(256)
  if library().kdjax_onednn_impl_info(KINDS[kind], batch, height, width, in_channels, out_channels, kernel_size,
                                       buffer, len(buffer)) < 0:
    raise RuntimeError(f"oneDNN: {buffer.value.decode()}")
  return buffer.value.decode()


def cached_primitives() -> int:
  """How many primitives the extension has created: one per (kind, shape), however many calls."""
  return library().kdjax_onednn_cache_size()


def scratchpad_bytes() -> int:
  """Bytes of the one scratch buffer every primitive shares (the largest need so far): the extension keeps it, so
  no call allocates scratch memory of its own."""
  return library().kdjax_onednn_scratchpad_bytes()


def _check(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> None:
  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32 or bias.dtype != jnp.float32:
    raise TypeError(f"oneDNN convs take float32, got {x.dtype}, {kernel.dtype}, {bias.dtype}")
  if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 != 1 \
      or kernel.shape[2] != x.shape[3] or bias.shape != kernel.shape[3:]:
    raise ValueError(f"oneDNN convs take x [N, H, W, C], kernel [K, K, C, D] (K odd), bias [D]; got "
                     f"{x.shape}, {kernel.shape}, {bias.shape}")


def _forward(x, kernel, bias):
  out = jax.ShapeDtypeStruct((*x.shape[:3], kernel.shape[3]), jnp.float32)
  return jax.ffi.ffi_call(TARGETS["forward"], out, vmap_method="sequential")(x, kernel, bias)


@jax.custom_vjp
def conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """The KxK (K odd) SAME stride-1 convolution plus bias of NHWC float32 `x` with HWIO `kernel`, in oneDNN."""
  library()
  _check(x, kernel, bias)
  return _forward(x, kernel, bias)


def _conv_fwd(x, kernel, bias):
  return conv(x, kernel, bias), (x, kernel)


def _conv_bwd(residuals, dy):
  x, kernel = residuals
  dx = jax.ffi.ffi_call(TARGETS["backward_data"], jax.ShapeDtypeStruct(x.shape, jnp.float32),
                        vmap_method="sequential")(kernel, dy)
  dkernel, dbias = jax.ffi.ffi_call(
      TARGETS["backward_weights"],
      (jax.ShapeDtypeStruct(kernel.shape, jnp.float32), jax.ShapeDtypeStruct(kernel.shape[3:], jnp.float32)),
      vmap_method="sequential")(x, dy)
  return dx, dkernel, dbias


conv.defvjp(_conv_fwd, _conv_bwd)


def runs_here(dtype) -> str:
  """"" when oneDNN can compute a convolution of `dtype` in the program being traced, else why not (one line)."""
  if np.dtype(dtype) != np.float32:
    return f"{np.dtype(dtype).name} convolutions stay in XLA (oneDNN path: float32)"
  if jax.default_backend() != "cpu":
    return f"backend {jax.default_backend()} (oneDNN path: CPU)"
  return unavailable_reason()
