"""Full-precision float32 on every backend, and where each framework runs.

On a GPU both frameworks would by default compute float32 matmuls and convs with TF32 (a 10-bit mantissa, ~1e-3
relative per op): JAX's default matmul precision on GPU/TPU uses reduced-precision passes, and PyTorch's cuDNN
convolutions allow TF32 unless told otherwise. A parity check at ~1e-7 per op needs IEEE float32 on both sides:

  JAX      jax_default_matmul_precision = "highest"    (every dot and conv, float32 and float64)
  PyTorch  torch.backends.fp32_precision = "ieee"      (matmul, cuDNN conv, oneDNN; torch >= 2.9), and the older
           torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

On a CPU this changes nothing the frameworks do by default (no TF32 there; oneDNN's fp32 is IEEE unless set to
bf16), but the settings are the same so that one statement holds everywhere. PyTorch runs on CUDA when JAX's
backend is a GPU and this torch build has CUDA, else on the CPU.
"""

import jax
import torch


def set_precision() -> None:
  """IEEE float32 matmuls and convs in both frameworks (no TF32, no bf16 passes), on any backend."""
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9: the setting the flags above are kept for
    torch.backends.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"


def torch_device() -> torch.device:
  """CUDA when JAX runs on a GPU and torch can use it (both frameworks on the accelerator), else the CPU."""
  if jax.default_backend() == "gpu" and torch.cuda.is_available():
    return torch.device("cuda")
  return torch.device("cpu")


def summary() -> str:
  """One line for the check's header: both frameworks' devices and the precision they were held to."""
  jax_device = jax.devices()[0]
  device = torch_device()
  torch_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
  gpu = jax.default_backend() == "gpu" or device.type == "cuda"
  matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
  conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
  torch_settings = (f"fp32_precision matmul={matmul} conv={conv}" if matmul is not None else
                    f"allow_tf32 matmul={torch.backends.cuda.matmul.allow_tf32} "
                    f"cudnn={torch.backends.cudnn.allow_tf32}")
  line = (f"JAX {jax.__version__} on {jax.default_backend()} ({jax_device.device_kind}), PyTorch {torch.__version__} "
          f"on {torch_name}; matmul/conv precision: JAX {jax.config.jax_default_matmul_precision}, PyTorch "
          f"{torch_settings}")
  if gpu:
    line += " — GPU: full-precision float32 forced on both sides (no TF32)"
  return line
