"""Batched, jitted evaluation on a whole split: logits, top-1/top-5, loss, agreement and KL to a teacher."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import data as data_lib
from kdjax.training import losses


@functools.lru_cache(maxsize=None)
def _predict_fn(model, mean: tuple, std: tuple, parallel=None):
  """The jitted forward for one model and one normalisation. mean and std are closed over (the cache key holds
  their exact values): data.normalize builds its lookup table from concrete values, never from jit arguments.
  parallel (a kdjax.training.mesh.DataParallel): the logits come back replicated, readable by every process."""
  mean, std = np.asarray(mean), np.asarray(std)

  def predict(params, images):
    return model.apply({"params": params}, data_lib.normalize(images, mean, std))
  if parallel is None:
    return jax.jit(predict)
  return jax.jit(predict, out_shardings=parallel.replicated)


def predict(model, params, images: np.ndarray, mean, std, batch_size: int, parallel=None) -> np.ndarray:
  """Logits float32 [N, K] for uint8 images [N, H, W, C], normalised by data.normalize(images, mean, std)
  (mean, std: concrete [C]), in fixed-size batches (the last one padded, so one compiled shape serves every
  batch). parallel: a kdjax.training.mesh.DataParallel over several devices: each batch sharded along `data`
  (batch_size divisible by the device count), params replicated."""
  # Python floats hold float32 and float64 values exactly: the key is the exact normalisation.
  exact = lambda values: tuple(np.asarray(values).reshape(-1).tolist())
  parallel = parallel if parallel is not None and parallel.mesh is not None else None
  fn = _predict_fn(model, exact(mean), exact(std), parallel)
  if parallel is not None:   # e.g. a checkpoint read onto one device (kdjax.cli.inspection)
    params = parallel.replicate(params)
  outputs = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    count = len(chunk)
    if count < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - count, *chunk.shape[1:]), chunk.dtype)])
    if parallel is not None:
      chunk = parallel.put_rows(chunk)
    outputs.append(np.asarray(fn(params, chunk))[:count])
  return np.concatenate(outputs)


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Per example: is the label among the k largest logits (k capped at the number of classes)."""
  k = min(k, logits.shape[-1])
  topk = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return (topk == labels[:, None]).any(axis=-1)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """val_top1 / val_top5 as percentages (0-100), val_loss = mean cross-entropy, val_correct = count."""
  correct = logits.argmax(axis=-1) == labels
  return {
      "val_loss": float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels))),
      "val_top1": float(100.0 * correct.mean()),
      "val_top5": float(100.0 * topk_correct(logits, labels, 5).mean()),
      "val_correct": int(correct.sum()),
  }


def teacher_comparison(student_logits: np.ndarray, teacher_logits: np.ndarray) -> dict:
  """agreement_with_teacher: % of examples with equal top-1; kl_to_teacher: mean KL(teacher||student), T=1."""
  agreement = student_logits.argmax(axis=-1) == teacher_logits.argmax(axis=-1)
  kl = losses.kl_per_example(jnp.asarray(student_logits), jnp.asarray(teacher_logits), 1.0)
  return {"agreement_with_teacher": float(100.0 * agreement.mean()),
          "kl_to_teacher": float(jnp.mean(kl))}
