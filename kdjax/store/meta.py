"""The checkpoint meta: what a save says of itself, so that a resume, a reused teacher and `inspect` can check
it. `phase_meta` builds it from plain values (a `RunFacts` the study fills once); store.resume, store.teacher,
store.run and study/resume.py read it:

  phase, model, net, layer_names, epoch, epochs_total, finished, step, steps_per_epoch,
  data_order {seed, next_epoch, rule}, data (data_fingerprint), epochs (the model's metric rows),
  config (config.json's content), conv ({net: {path, why}}: who computed the convs of each net the phase runs,
  kdjax.config.nets.conv_path; absent in saves of an older kdjax);
  the phase's own model also: records (every metrics.jsonl row of the phase so far) and
  results {model: {epochs, train_seconds, train_images}} for each model of the phase;
  integrity (added by checkpoints.ModelCheckpoints.save: the sha256 of every array and of the meta).
"""

import dataclasses
import hashlib
import json

import numpy as np

from kdjax import data as data_lib
from kdjax import phases


FINGERPRINT_SAMPLE = 256   # images per split whose bytes are hashed: evenly spaced, first and last included


def _sha256(array) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def data_fingerprint(dataset: data_lib.Dataset) -> dict:
  """What identifies the data a model was trained and evaluated on, whatever path it was read from: the split
  sizes, image shape, class names, a hash of all labels and of a fixed sample of images per split."""
  fingerprint = {"name": dataset.name, "image_shape": list(dataset.image_shape),
                 "num_classes": dataset.num_classes,
                 "class_names_sha256": hashlib.sha256(json.dumps(list(dataset.class_names)).encode()).hexdigest()}
  for split in ("train", "validation"):
    images, labels = dataset.split(split)
    sample = np.unique(np.linspace(0, len(labels) - 1, min(len(labels), FINGERPRINT_SAMPLE)).round().astype(int))
    fingerprint[f"{split}_examples"] = int(len(labels))
    fingerprint[f"{split}_labels_sha256"] = _sha256(np.asarray(labels, np.int64))
    fingerprint[f"{split}_images_sample_sha256"] = _sha256(images[sample])
  return fingerprint


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
  """What differs between two data fingerprints, e.g. "train_examples (256 -> 300)", "validation labels"."""
  changes = []
  for key in sorted(set(saved) | set(current)):
    old, new = saved.get(key), current.get(key)
    if old == new:
      continue
    if key.endswith("_sha256"):
      changes.append(key.removesuffix("_sha256").replace("_", " "))
    else:
      changes.append(f"{key} ({json.dumps(old)} -> {json.dumps(new)})")
  return changes


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What every save of one run says alike: the config's content (config.json's), its epochs and seed, the
  steps per epoch, the data fingerprint, each net's layer names and who computes its convs ({net: {path, why}})."""

  config_json: dict
  epochs_total: int
  seed: int
  steps_per_epoch: int
  data: dict
  layer_names: dict
  conv: dict


def phase_meta(facts: RunFacts, phase: str, model: phases.Model, epoch: int, step: int, epochs: list) -> dict:
  """The meta saved with `model`'s checkpoint of `phase` at `epoch` (the phase's own model adds `records`
  and `results`, see study/experiment.save_phase)."""
  return {"phase": phase, "model": model.name, "net": model.net,
          "layer_names": list(facts.layer_names[model.net]),
          "epoch": epoch, "epochs_total": facts.epochs_total, "finished": epoch == facts.epochs_total,
          "step": step, "steps_per_epoch": facts.steps_per_epoch,
          # epoch_order(n, seed, epoch) depends on nothing else: the next epoch's order is known.
          "data_order": {"seed": facts.seed, "next_epoch": epoch + 1,
                         "rule": "numpy default_rng([seed, epoch]).permutation(train_examples)"},
          "data": facts.data, "epochs": epochs, "config": facts.config_json,
          "conv": {net: facts.conv[net] for net in phase_nets(phase)}}


def phase_nets(phase: str) -> list[str]:
  """The nets whose convs a phase computes: its own, and its teacher's for a distillation phase (the mean
  teacher's is the student's own architecture: spec.teacher_net)."""
  spec = phases.phase(phase)
  return [spec.net] + ([spec.teacher_net] if spec.needs_teacher and spec.teacher_net != spec.net else [])
