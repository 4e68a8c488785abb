"""Classification and distillation losses (logits float32 [N, K], labels int [N]).

distill_kl is the original's loss, RepDistiller's DistillKL:

  KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T * T
    = (1/N) * sum_n sum_k p_nk * (log p_nk - log q_nk) * T^2,   p = softmax(t/T), q = softmax(s/T)

i.e. KL(teacher || student) at temperature T, summed over classes, averaged over the batch ("batchmean"),
scaled by T^2 so that its gradients keep their size as T changes (Hinton et al., 2015). No gradient flows
into the teacher.

`weights` (float [N], optional): a masked mean sum_n w_n * l_n / sum_n w_n instead of the plain mean, for a
batch padded to a fixed size across devices (kdjax/training/mesh.py); None keeps the plain mean's program.
"""

import jax
import jax.numpy as jnp
import optax


def batch_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """mean(values), or sum(weights * values) / sum(weights) with weights."""
  if weights is None:
    return values.mean()
  return jnp.sum(values * weights) / jnp.sum(weights)


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean over the batch of -log softmax(logits)[label]; PyTorch's CrossEntropyLoss()."""
  return batch_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), weights)


def kl_per_example(student_logits: jax.Array, teacher_logits: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
  """KL(softmax(t/T) || softmax(s/T)) for each example, shape [N] (no T^2 factor)."""
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  teacher_probs = jnp.exp(teacher_log_probs)
  # xlogy-style convention: terms with p = 0 contribute 0, as in PyTorch's KLDivLoss.
  terms = jnp.where(teacher_probs > 0, teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
  return terms.sum(axis=-1)


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: float, weights: jax.Array | None = None) -> jax.Array:
  """The original's KD loss: max(batchmean KL(softmax(t/T) || softmax(s/T)) * T^2, 0); teacher detached.

  KL >= 0 exactly, but its float32 sum of p·(log p − log q) can come out a few ulps below 0 when the two
  distributions nearly agree, which at a large T (logits/T all near 0) is every example; T² (10⁶ at T = 1000)
  would print that rounding as a negative loss. The clamp is on the batch's loss, not on each example's KL: a
  per-example max(KL, 0) splits XLA's fused [N, K] reduction in two and moves the loss's last bits at T = 4
  (the digits study's student_kd train_loss 3.319336476533309 -> 3.3193363314089566); max(loss, 0) leaves every
  positive loss, and its gradient, bit for bit as they were."""
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  loss = batch_mean(kl_per_example(student_logits, teacher_logits, temperature), weights) * temperature**2
  return jnp.maximum(loss, 0.0)


def student_objective(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                      temperature: float, kd_weight: float, ce_weight: float,
                      weights: jax.Array | None = None) -> jax.Array:
  """kd_weight * distill_kl + ce_weight * cross_entropy (the seed: kd_weight=1, ce_weight=0)."""
  loss = kd_weight * distill_kl(student_logits, teacher_logits, temperature, weights)
  if ce_weight:
    loss = loss + ce_weight * cross_entropy(student_logits, labels, weights)
  return loss
