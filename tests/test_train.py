import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import data as data_lib
from kdjax import models
from kdjax import optim
from kdjax import train
from kdjax.config import default_config


def _batch(count=32, size=16, seed=0):
  key_x, key_y = jax.random.split(jax.random.PRNGKey(seed))
  return {"image": jax.random.randint(key_x, (count, size, size, 3), 0, 256).astype(jnp.uint8),
          "label": jax.random.randint(key_y, (count,), 0, 10)}


@pytest.mark.parametrize("optimizer_name", ["adam", "sgd", "adamw"])
def test_steps_lower_the_loss_on_a_fixed_batch(optimizer_name):
  opt_config = default_config().optimizer
  opt_config.name = optimizer_name
  opt_config.learning_rate = 1e-2 if optimizer_name != "sgd" else 0.01
  model = models.teacher_net(10, init="pytorch" if optimizer_name != "sgd" else "lecun_normal")
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  optimizer = optim.make_optimizer(opt_config, 30)
  step = jax.jit(train.make_train_step(train.StepConfig("ce"), model, optimizer, jnp.full(3, 0.5),
                                       jnp.full(3, 0.25)), donate_argnums=0)
  state = train.create_state(params, optimizer)
  batch = _batch(count=8)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.8 * losses[0]
  assert int(state.step) == 30


def test_create_state_copies_so_donation_keeps_the_callers_params():
  model = models.student_net(10)
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  optimizer = optim.make_optimizer(default_config().optimizer, 1)
  step = jax.jit(train.make_train_step(train.StepConfig("ce"), model, optimizer, jnp.zeros(3), jnp.ones(3)),
                 donate_argnums=0)
  step(train.create_state(params, optimizer), _batch())
  assert np.isfinite(np.asarray(params["conv1"]["kernel"])).all()  # still readable, not donated away


def _run_one_epoch(seed):
  model = models.student_net(10)
  optimizer = optim.make_optimizer(default_config().optimizer, 10)
  step = jax.jit(train.make_train_step(train.StepConfig("ce"), model, optimizer, jnp.zeros(3), jnp.ones(3)),
                 donate_argnums=0)
  state = train.create_state(models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3)), optimizer)
  batch = _batch(count=100)
  order = data_lib.epoch_order(100, seed, 1)
  state, result = train.run_epoch(step, state, batch["image"], batch["label"], order, 32, False, "test", False)
  return state, result


def test_epoch_is_deterministic_and_keeps_the_short_batch():
  state_a, result_a = _run_one_epoch(seed=3)
  state_b, result_b = _run_one_epoch(seed=3)
  assert result_a.steps == 4  # 32 + 32 + 32 + 4, as PyTorch's DataLoader (drop_last=False)
  assert result_a.train_loss == result_b.train_loss
  jax.tree_util.tree_map(np.testing.assert_array_equal, state_a.params, state_b.params)
  _, result_c = _run_one_epoch(seed=4)
  assert result_c.train_loss != result_a.train_loss


def test_non_finite_loss_stops_with_the_step():
  model = models.student_net(10)
  optimizer = optim.make_optimizer(default_config().optimizer, 10)
  step = jax.jit(train.make_train_step(train.StepConfig("ce"), model, optimizer, jnp.zeros(3), jnp.ones(3)))
  params = models.init_params(model, jax.random.PRNGKey(0), (16, 16, 3))
  params["fc"]["bias"] = params["fc"]["bias"].at[0].set(jnp.nan)
  batch = _batch(count=64)
  with pytest.raises(train.DivergenceError, match=r"at step 1\b"):
    train.run_epoch(step, train.create_state(params, optimizer), batch["image"], batch["label"],
                    np.arange(64), 32, False, "teacher epoch 1/2", False)


def test_epoch_order_and_batches():
  assert not np.array_equal(data_lib.epoch_order(50, 0, 1), data_lib.epoch_order(50, 0, 2))
  np.testing.assert_array_equal(data_lib.epoch_order(50, 0, 1), data_lib.epoch_order(50, 0, 1))
  assert [len(b) for b in data_lib.batch_indices(np.arange(10), 4)] == [4, 4, 2]
  assert [len(b) for b in data_lib.batch_indices(np.arange(10), 4, drop_remainder=True)] == [4, 4]
