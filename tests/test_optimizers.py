"""The optimiser and its schedules against hand-worked traces and PyTorch's own."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from cowmix_jax import optimizers
from cowmix_jax.cli import ConfigError
from cowmix_jax.config_checks import validate_config


@pytest.mark.parametrize("schedule", ["constant", "cosine", "poly"])
def test_learning_rate_schedule_drives_adam(schedule, tiny_config):
  """With a constant gradient Adam's step is the learning rate itself (m / sqrt(v) = 1),
  so the parameter traces minus the running sum of the schedule, here by hand."""
  tiny_config.learning_rate, tiny_config.num_train_steps = 0.1, 10
  tiny_config.lr_schedule = schedule
  tx = optimizers.make_optimizer(tiny_config)
  params = {"w": jnp.zeros(())}
  opt_state = tx.init(params)
  trace = []
  for _ in range(12):
    updates, opt_state = tx.update({"w": jnp.ones(())}, opt_state, params)
    params = optax.apply_updates(params, updates)
    trace.append(float(params["w"]))
  steps = np.minimum(np.arange(12), 10)
  rates = 0.1 * {"constant": np.ones(12),
                 "cosine": 0.5 * (1 + np.cos(np.pi * steps / 10)),
                 "poly": (1 - steps / 10) ** 0.9}[schedule]
  np.testing.assert_allclose(trace, -np.cumsum(rates), rtol=1e-5, atol=1e-7)
  assert optimizers.learning_rate_at(tiny_config, 5) == pytest.approx(rates[5])


def torch_trace(name: str, weight_decay: float, rates: np.ndarray, start: np.ndarray,
                target: np.ndarray) -> np.ndarray:
  """PyTorch's optimiser on ``0.5 * |w * start - target|^2`` (a gradient that moves with
  ``w``), the rate of step t set before step t (UniMatch sets it after, so that its
  steps 0 and 1 both run at the base rate: a one-step shift)."""
  w = torch.tensor(np.ones_like(start), dtype=torch.float64, requires_grad=True)
  x, y = torch.tensor(start), torch.tensor(target)
  optimizer = (torch.optim.SGD([w], lr=rates[0], momentum=0.9, weight_decay=weight_decay)
               if name == "sgd" else
               torch.optim.Adam([w], lr=rates[0], weight_decay=weight_decay))
  trace = []
  for rate in rates:
    for group in optimizer.param_groups:
      group["lr"] = float(rate)
    optimizer.zero_grad()
    (0.5 * ((w * x - y) ** 2).sum()).backward()
    optimizer.step()
    trace.append(w.detach().numpy().copy())
  return np.array(trace)


@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_the_optimiser_follows_pytorch_with_the_poly_schedule(name, weight_decay,
                                                             tiny_config):
  """UniMatch's training: SGD (momentum 0.9, weight decay added to the gradient) at a
  poly rate, against torch.optim.SGD stepped the same way; Adam's weight decay as
  torch.optim.Adam's."""
  tiny_config.optimizer, tiny_config.weight_decay = name, weight_decay
  tiny_config.learning_rate, tiny_config.num_train_steps = 0.05, 8
  tiny_config.lr_schedule = "poly"
  rng = np.random.default_rng(0)
  start, target = rng.normal(size=4), rng.normal(size=4)
  rates = np.array([optimizers.learning_rate_at(tiny_config, t) for t in range(8)])
  np.testing.assert_allclose(rates, 0.05 * (1 - np.arange(8) / 8) ** 0.9, rtol=1e-6)
  tx = optimizers.make_optimizer(tiny_config)
  params = jnp.ones(4)
  opt_state = tx.init(params)
  trace = []
  for _ in range(8):
    gradient = (params * start - target) * start
    updates, opt_state = tx.update(gradient, opt_state, params)
    params = optax.apply_updates(params, updates)
    trace.append(np.asarray(params))
  np.testing.assert_allclose(trace, torch_trace(name, weight_decay, rates, start, target),
                             rtol=1e-5, atol=1e-6)


def test_pretrained_parameters_learn_at_the_multiplier(tiny_config):
  """UniMatch's head at 10x its backbone's rate is learning_rate with
  pretrained_lr_multiplier 0.1: SGD's first step is rate x gradient, by hand."""
  tiny_config.optimizer, tiny_config.learning_rate = "sgd", 0.01
  tiny_config.model.pretrained_lr_multiplier = 0.1
  tx = optimizers.make_optimizer(tiny_config, {"backbone": "pretrained", "head": "new"})
  params = {"backbone": jnp.zeros(()), "head": jnp.zeros(())}
  updates, _ = tx.update({"backbone": jnp.ones(()), "head": jnp.ones(())},
                         tx.init(params), params)
  assert float(updates["backbone"]) == pytest.approx(-0.001)
  assert float(updates["head"]) == pytest.approx(-0.01)


def test_bad_optimiser_settings_are_named_together_before_any_work(tiny_config):
  config = tiny_config
  config.optimizer, config.lr_schedule, config.weight_decay = "lamb", "step", -1e-4
  with pytest.raises(ConfigError) as error:
    validate_config(config, 1)
  message = str(error.value)
  assert "config.optimizer='lamb': choose one of ['adam', 'sgd']" in message
  assert "config.lr_schedule='step': choose one of ['constant', 'cosine', 'poly']" in message
  assert "config.weight_decay=-0.0001 must be in [0, inf]" in message
