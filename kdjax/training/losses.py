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

import functools

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
  # xlogy-style convention: terms with p = 0 contribute 0, as in PyTorch's KLDivLoss; a NaN p (a NaN teacher) stays
  # NaN (`not p <= 0`, where `p > 0` would make it 0 and hide the NaN teacher behind a zero loss).
  terms = jnp.where(~(teacher_probs <= 0), teacher_probs * (teacher_log_probs - student_log_probs), 0.0)
  return terms.sum(axis=-1)


# Above this temperature distill_kl is the exact form (exact_kl_per_example); at or below it, the plain float32 form,
# the program kdjax has always compiled (see distill_kl).
PLAIN_UP_TO = 10.0


def _h_terms(d: jax.Array, p: jax.Array, q: jax.Array) -> jax.Array:
  """q·h(d), h(d) = e^d (d − 1) + 1 = Σ_{n≥2} (n−1) dⁿ/n! ≥ 0, d = log p − log q: the KL's term p·d − p + q.

  |d| < 0.1: the series to d⁷ (truncation < 1e-8 relative), as p·d − p + q would cancel to ~eps/|d|; else
  p·d − (p − q) itself (h(±0.1) ≈ 0.005 ≫ its rounding). Both are ≥ 0 in float32."""
  small = jnp.abs(d) < 0.1
  ds = jnp.where(small, d, 0.0)   # the unused branch stays finite (no NaN through the where's gradient)
  series = ds * ds * (1 / 2 + ds * (1 / 3 + ds * (1 / 8 + ds * (1 / 30 + ds * (1 / 144 + ds / 840)))))
  return jnp.where(small, q * series, p * d - (p - q))


def _exact_parts(student_logits, teacher_logits, temperature):
  """(KL [N], p, q, d) for exact_kl_per_example, d = log p − log q [N, K].

  d = u − log Σ_k q_k e^{u_k}, u = (t − s)/T centred over the classes (d does not change with u's shift); where
  every |u| ≤ 1 the log is log1p(Σ q·expm1(u)), exact to ~eps·|u| instead of ~eps·|log q| for the difference of
  two log-softmaxes, which is used where |u| > 1 (there d is not small)."""
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  q, p = jnp.exp(log_q), jnp.exp(log_p)
  u = (teacher_logits - student_logits) / temperature
  u = u - u.mean(axis=-1, keepdims=True)
  near = jnp.max(jnp.abs(u), axis=-1, keepdims=True) <= 1.0
  u_near = jnp.where(near, u, 0.0)
  d_near = u_near - jnp.log1p(jnp.sum(q * jnp.expm1(u_near), axis=-1, keepdims=True))
  d = jnp.where(near, d_near, log_p - log_q)
  return _h_terms(d, p, q).sum(axis=-1), p, q, d


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def exact_kl_per_example(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """KL(softmax(t/T) || softmax(s/T)) for each example, shape [N], as Σ_k q_k·h(d_k), a sum of terms ≥ 0
  (_h_terms): within ~1e-6 relative of float64 at any T, and 0 only where p = q, where its gradient is 0 too.

  Gradient (custom_jvp, the formula rather than autodiff through the branches): ∂KL/∂s_k = (q_k − p_k)/T,
  as −q_k·expm1(d_k)/T where p ≈ q (no cancellation); ∂KL/∂t_k = p_k·(d_k − KL)/T. Every term is finite for finite
  logits, so a zero cotangent (distill_kl's unused form) gives an exact zero, never 0·inf = NaN."""
  return _exact_parts(student_logits, teacher_logits, temperature)[0]


@exact_kl_per_example.defjvp
def _exact_kl_jvp(temperature, primals, tangents):
  kl, p, q, d = _exact_parts(*primals, temperature)
  student_tangent, teacher_tangent = tangents
  # −q·expm1(d) where p ≈ q; q − p elsewhere (there e^d may overflow where q underflows: 0·inf would be NaN)
  near = jnp.abs(d) < 1.0
  grad_student = jnp.where(near, -q * jnp.expm1(jnp.where(near, d, 0.0)), q - p) / temperature
  grad_teacher = p * (d - kl[..., None]) / temperature
  return kl, (grad_student * student_tangent).sum(axis=-1) + (grad_teacher * teacher_tangent).sum(axis=-1)


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array,
               temperature: float, weights: jax.Array | None = None) -> jax.Array:
  """The original's KD loss: batchmean KL(softmax(t/T) || softmax(s/T)) * T^2; teacher detached.

  Two forms of one number, chosen by T (a Python float: the step's static config): above PLAIN_UP_TO = 10
  exact_kl_per_example (a sum of terms ≥ 0, within ~1e-6 of float64 at any T, gradient T·(q − p)/N); at T ≤ 10
  max(kl_per_example, 0), the program kdjax has always compiled. Why: docs/study.md#the-study."""
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  if temperature > PLAIN_UP_TO:
    return batch_mean(exact_kl_per_example(student_logits, teacher_logits, temperature), weights) * temperature**2
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
