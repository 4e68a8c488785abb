"""training/jit_step.py, the one place a step is jitted: the state donated (the batch never), the study's XLA:CPU
options, the same numbers as a plain jax.jit of the same step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax.nets import models
from kdjax.training import jit_step
from kdjax.training import mesh as mesh_lib
from kdjax.training import train


def _step_and_state():
  model = models.student_net(10)
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  optimizer = optax.sgd(0.1)
  step = train.make_train_step(train.StepConfig("ce"), model, optimizer, jnp.full(3, 0.5), jnp.full(3, 0.25))
  batch = {"image": jax.random.randint(jax.random.PRNGKey(1), (4, 16, 16, 3), 0, 256).astype(jnp.uint8),
           "label": jnp.arange(4, dtype=jnp.int32)}
  return step, (lambda: train.create_state(params, optimizer)), batch


def test_the_state_is_donated_and_the_batch_is_kept():
  step, fresh, batch = _step_and_state()
  state = fresh()
  jitted = jit_step.jit_step(step, xla_cpu_options=True, parallel=mesh_lib.DataParallel())   # one device: no mesh
  new_state, _ = jitted(state, batch)
  assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(state.params))
  assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves((batch, new_state)))
  kept = fresh()
  jit_step.jit_step(step, donate=False)(kept, batch)
  assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(kept))


def test_the_jitted_step_computes_what_a_plain_jit_of_it_does():
  step, fresh, batch = _step_and_state()
  ours, _ = jit_step.jit_step(step, xla_cpu_options=False)(fresh(), batch)
  plain, _ = jax.jit(step)(fresh(), batch)
  for got, want in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(plain)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
