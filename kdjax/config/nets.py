"""The nets a config describes: kdjax.nets' Flax modules built from config.model.* and config.speed.*, also
for a config.json written by an older kdjax (a field it lacks means what it meant then), and who computes their
convolutions (XLA, XLA on pixel blocks, or oneDNN: `conv_engine`)."""

import platform

import jax
import numpy as np

from kdjax.config import defaults
from kdjax.nets import models
from kdjax.nets import onednn_conv

SPEED_CONVS = ("auto", "xla", "blocks", "onednn")   # config speed.conv: who computes the convs (conv_engine)


def from_config(net: str, num_classes: int, config) -> models.ConvNet:
  """The study's `net` ("teacher" or "student") as `config` (model.*, speed.*) builds it; who computes its convs
  is conv_engine's answer to speed.conv and speed.{net}_conv. A field that an older workdir's config lacks means
  what it meant then (defaults.ABSENT_MEANS: speed.conv "xla", speed.{net}_conv "xla")."""
  speed = config.get("speed") or {}
  engine, conv, _ = conv_engine(config, net)
  return models.MODEL_FACTORIES[net](num_classes, config.model.activation, config.model.init,
                                     pool=speed.get("pool", "fast"), conv=conv, engine=engine)


def conv_engine(config, net: str) -> tuple[str, str, str]:
  """(engine, conv, why) of `net`'s convs under config speed.* (an older workdir's absent speed.conv means
  defaults.ABSENT_MEANS's: XLA): engine "onednn", "auto" (oneDNN if runs_here at trace time, else XLA) or "xla";
  conv the XLA formulation ("xla" nn.Conv or "blocks") where XLA computes them.

  speed.conv  auto    oneDNN for float32 on an x86_64 CPU with the extension loaded and one data-parallel device;
                      else XLA as speed.{net}_conv says
              xla     XLA as speed.{net}_conv says (teacher on pixel blocks, student nn.Conv by default): what
                      kdjax computed before speed.conv existed
              blocks  XLA on pixel blocks for both nets (kdjax.block_conv)
              onednn  oneDNN for every conv (config.validation refuses it where it cannot run)
  """
  speed = config.get("speed") or {}
  field = f"{net}_conv"
  per_net = speed.get(field, defaults.ABSENT_MEANS[f"speed.{field}"])
  mode = speed.get("conv", defaults.ABSENT_MEANS["speed.conv"])
  if mode == "onednn":
    return "onednn", per_net, "speed.conv onednn"
  if mode == "blocks":
    return "xla", "blocks", "speed.conv blocks"
  if mode == "xla":
    return "xla", per_net, f"speed.conv xla (speed.{field} {per_net})"
  devices = _mesh_devices(config)
  if devices > 1:
    return "xla", per_net, (f"speed.conv auto: {devices} data-parallel devices (the oneDNN custom call runs on one); "
                            f"XLA with speed.{field} {per_net}")
  reason = onednn_conv.runs_here(np.float32)
  if reason:
    return "xla", per_net, f"speed.conv auto: {reason}; XLA with speed.{field} {per_net}"
  return "auto", per_net, f"speed.conv auto: float32 on {platform.machine()} CPU, oneDNN {onednn_conv.version()} extension loaded"


def _mesh_devices(config) -> int:
  mesh = config.get("mesh") or {}
  return int(mesh.get("num_devices", 0) or len(jax.devices()))


def conv_path(config, net: str) -> dict:
  """{"path": "onednn" | "xla" | "xla (pixel blocks)", "why": ...}: who computes `net`'s float32 convs in this
  process under `config`, and why (conv_engine)."""
  engine, conv_kind, why = conv_engine(config, net)
  path = "onednn" if engine in ("onednn", "auto") else ("xla (pixel blocks)" if conv_kind == "blocks" else "xla")
  if path == "onednn":
    why += f", {onednn_conv.threads()} OpenMP threads"
    if config.speed.get("pool", "fast") == "fast":   # kdjax.nets.models: a oneDNN conv's fast pool is oneDNN's
      why += "; 2x2 max-pools in the oneDNN extension too"
  return {"path": path, "why": why}


def conv_paths(config) -> dict:
  """{net: conv_path(config, net)} of both nets: what a save records of this run's convs (store/meta.py)."""
  return {net: conv_path(config, net) for net in ("teacher", "student")}


def describe(config, saved: dict | None = None) -> dict:
  """What report.json's environment says about the convs: {net: {"path": "onednn" | "xla" | "blocks" | ...,
  "why": ...}}, for float32 runs (float64, the parity suite's, always stays in XLA). `saved`: {net: [{phase,
  epoch, path, why}, ...]}, the saves this run resumed (or took its teacher from) whose convs another path
  computed (study/resume.py, study/teacher.py find them); the net's entry lists those under "saved", and its
  "why" says so (report.md prints it)."""
  described = {}
  for net in ("teacher", "student"):
    described[net] = conv_path(config, net)
    path = described[net]["path"]
    others = [entry for entry in (saved or {}).get(net, []) if entry["path"] != path]
    if others:
      described[net]["saved"] = others
      described[net]["why"] += "; resumed from saves computed otherwise: " + ", ".join(
          f"phase {entry['phase']} (epoch {entry['epoch']}) {entry['path']}" for entry in others)
  return described


def validation_error(config) -> str:
  """"" when speed.conv can run, else the one-line ConfigError message naming speed.conv."""
  mode = config.speed.get("conv", "auto")
  if mode not in SPEED_CONVS:
    return f"speed.conv must be one of {SPEED_CONVS}, got {mode!r}"
  if mode != "onednn":
    return ""
  reason = onednn_conv.runs_here(np.float32)
  if not reason and _mesh_devices(config) > 1:
    reason = f"{_mesh_devices(config)} data-parallel devices (the custom call runs on one; set mesh.num_devices=1)"
  return f"speed.conv 'onednn' cannot run here: {reason}" if reason else ""
