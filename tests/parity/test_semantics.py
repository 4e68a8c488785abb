"""The float64 check catches semantic errors: each of the issue's five is injected into kdjax (monkeypatched for one
test) and the float64 comparison with the unchanged PyTorch reference must fail, where the uninjected kdjax passes.

  pairing     the original's EMA pairs tensors in sorted key order (conv1, conv10, conv11, ...), not definition order
  no T^2      the KD loss without its T*T factor
  flatten     the model flattens C*H*W (PyTorch's order) while its fc rows are H*W*C
  adam        Adam's bias correction with the step count off by one: 1 - b^(t+1)
  EMA point   the teacher updated from the post-step student, or the teacher's logits taken after its update

32x32 inputs: at 16x16 the fc input is a 1x1 map, where both flatten orders agree.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from configs import ema as ema_config
from kdjax.training import ema
from kdjax.training import evaluate
from kdjax.training import losses
from kdjax.training import optim
from kdjax.training import train
from parity import compare
from parity import harness

pytestmark = [pytest.mark.usefixtures("one_torch_thread", "highest_matmul_precision"), pytest.mark.optimized]   # float64 / published references

STEPS = 4
PHASES = ("student_kd", "student_kd_ema")


@pytest.fixture(scope="module")
def reference_runs():
  """float64 setup, batches and the PyTorch side of each phase (distilling from the initial teacher), computed once:
  the injections change kdjax only."""
  config = ema_config.get_config()
  config.data.image_size = 32
  config.data.max_train_examples = 128
  config.data.max_val_examples = 64
  config.batch_size = 32
  config.ema.decay = 0.99
  config.optimizer.weight_decay = 1e-4  # Adam with L2 (test_parity_trajectory runs the KD steps with SGD)
  setup = harness.make_setup(config, "float64")
  batches = harness.first_steps(setup, STEPS)
  teacher = setup.initial_params["teacher"]
  torch_runs = {phase: harness.torch_side(setup, phase, batches, setup.initial_params["student"], teacher, 0.9)
                for phase in PHASES}
  return setup, batches, torch_runs


def _failures(reference_runs, phase) -> list[str]:
  setup, batches, torch_runs = reference_runs
  run = harness.run_phase(setup, phase, batches, teacher_params=setup.initial_params["teacher"], student_decay=0.9,
                          torch_run=torch_runs[phase])
  return [f"{row.model}: {failure}" for row in compare.rows(run, setup.dataset.val_labels)
          for failure in row.failures]


# ------------------------------------------------------------------------------------------------- injections

def sorted_key_pairing(monkeypatch):
  torch_zip_pairs = ema.torch_zip_pairs
  monkeypatch.setattr(ema, "torch_zip_pairs", lambda student, student_layers, teacher, teacher_layers: torch_zip_pairs(
      student, sorted(student_layers), teacher, sorted(teacher_layers)))


def kd_loss_without_t_squared(monkeypatch):
  def distill_kl(student_logits, teacher_logits, temperature, weights=None):
    return losses.batch_mean(
        losses.kl_per_example(student_logits, jax.lax.stop_gradient(teacher_logits), temperature), weights)
  monkeypatch.setattr(losses, "distill_kl", distill_kl)


class _ChwFlattenDense(nn.Dense):
  """Dense fed its input re-ordered from H*W*C (Flax's flatten) to C*H*W: a model that flattens like PyTorch while
  its fc rows stay in Flax's order. (Every Dense in these nets is the fc after 12-channel convs.)"""

  def __call__(self, inputs):
    batch, features = inputs.shape
    side = math.isqrt(features // 12)
    return super().__call__(inputs.reshape(batch, side, side, 12).transpose(0, 3, 1, 2).reshape(batch, -1))


def chw_flatten(monkeypatch):
  monkeypatch.setattr(nn, "Dense", _ChwFlattenDense)
  # evaluate caches its jitted forward per (model, normalisation); the nets here compare equal to the unpatched
  # ones, so drop the cache to have the injected model evaluated too (and again afterwards).
  evaluate._predict_fn.cache_clear()


def adam_bias_correction_off_by_one(monkeypatch):
  def make_optimizer(opt_config, total_steps):
    b1, b2, eps = opt_config.b1, opt_config.b2, opt_config.eps

    def init(params):
      zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
      return zeros, zeros, jnp.zeros((), jnp.int32)

    def update(grads, state, params=None):
      mu, nu, count = state
      count = count + 1
      mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, mu, grads)
      nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, grads)
      # Wrong: 1 - b^(t+1) where Adam divides by 1 - b^t.
      updates = jax.tree_util.tree_map(
          lambda m, v: (m / (1 - b1 ** (count + 1))) / (jnp.sqrt(v / (1 - b2 ** (count + 1))) + eps), mu, nu)
      return updates, (mu, nu, count)

    return optax.chain(optax.add_decayed_weights(opt_config.weight_decay), optax.GradientTransformation(init, update),
                       optax.scale(-opt_config.learning_rate))
  monkeypatch.setattr(optim, "make_optimizer", make_optimizer)


def _reordered_ema_step(monkeypatch, order):
  """The kd_ema step rebuilt from kdjax's own kd step (teacher logits, then the student's step) and
  ema.pull_teacher_toward_student, in the given order: "seed" (logits, EMA from the pre-step student, step: the original's,
  a control), "after_step" (EMA from the post-step student), "before_logits" (EMA, then logits from the updated
  teacher). Constant decay (no warm-up in this config)."""
  make_train_step = train.make_train_step

  def make(step_config, student, optimizer, mean, std, teacher=None, teacher_pairs=()):
    if step_config.kind != "kd_ema":
      return make_train_step(step_config, student, optimizer, mean, std, teacher, teacher_pairs)
    kd_step = make_train_step(dataclasses.replace(step_config, kind="kd"), student, optimizer, mean, std, teacher)
    ema_update = lambda teacher_params, student_params: ema.pull_teacher_toward_student(
        teacher_params, student_params, teacher_pairs, step_config.teacher_decay)

    def step(state, batch):
      if order == "before_logits":
        return kd_step(state.replace(teacher_params=ema_update(state.teacher_params, state.params)), batch)
      new_state, metrics = kd_step(state, batch)
      student_params = new_state.params if order == "after_step" else state.params
      return new_state.replace(teacher_params=ema_update(state.teacher_params, student_params)), metrics
    return step
  monkeypatch.setattr(train, "make_train_step", make)


# name -> (inject, phase, a failure the float64 check must report)
INJECTIONS = {
    "sorted_key_pairing": (sorted_key_pairing, "student_kd_ema", "teacher_ema: params"),
    "no_t_squared": (kd_loss_without_t_squared, "student_kd", "student_kd: loss at step 1"),
    "chw_flatten": (chw_flatten, "student_kd", "student_kd: forward on the same weights"),
    "adam_bias_correction": (adam_bias_correction_off_by_one, "student_kd", "student_kd: loss at step 2"),
    "ema_after_step": (lambda mp: _reordered_ema_step(mp, "after_step"), "student_kd_ema", "teacher_ema: params"),
    "logits_after_ema": (lambda mp: _reordered_ema_step(mp, "before_logits"), "student_kd_ema",
                         "student_kd_ema: loss at step 1"),
}


@pytest.mark.parametrize("phase", PHASES)
def test_kdjax_as_is_passes(reference_runs, phase):
  assert _failures(reference_runs, phase) == []


# The quick tier injects one error into each kind of number the check compares (the EMA's pairing: parameters; the
# missing T^2: a loss; the flatten order: a forward); the slow tier also the step-order and optimizer errors, with
# the control that the rebuilt step in the original's order passes.
SLOW_INJECTIONS = ("adam_bias_correction", "ema_after_step", "logits_after_ema")


@pytest.mark.slow
def test_the_rebuilt_seed_order_passes(reference_runs, monkeypatch):
  """Control for the EMA-point injections: the same rebuilt step in the original's order passes."""
  _reordered_ema_step(monkeypatch, "seed")
  assert _failures(reference_runs, "student_kd_ema") == []


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_INJECTIONS else name
                                  for name in sorted(INJECTIONS)])
def test_an_injected_error_fails_the_float64_check(reference_runs, monkeypatch, name):
  inject, phase, expected = INJECTIONS[name]
  inject(monkeypatch)
  try:
    failures = _failures(reference_runs, phase)
  finally:
    evaluate._predict_fn.cache_clear()  # nothing compiled under an injection outlives it
  assert any(failure.startswith(expected) for failure in failures), failures
