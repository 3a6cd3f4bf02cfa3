"""Train state (student, teacher, optimiser) and the mean-teacher EMA update."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree of arrays.

  Attributes:
    step: int32 scalar, number of optimiser steps taken.
    params, batch_stats: the student's weights and BatchNorm statistics.
    opt_state: the optax state of the student's optimiser.
    teacher_params, teacher_batch_stats: exponential moving averages of the student's.
    key: the run's base PRNG key (uint32 ``[2]``); step keys are ``fold_in(key, step)``.
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  teacher_params: PyTree
  teacher_batch_stats: PyTree
  key: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       key: jax.Array, input_shape, variables=None) -> TrainState:
  """Initialises student and teacher to the same weights: ``variables`` (e.g. random
  ones with pretrained weights merged in) or, when None, a fresh random init.

  Args:
    model: a Flax module called as ``model(x, train=...)``.
    tx: the student's optimiser.
    key: the run's base key (from the config's seed).
    input_shape: ``(N, H, W, C)`` of a dummy input.
  """
  if variables is None:
    variables = init_variables(model, key, input_shape)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      # Copies: the teacher must own its buffers, since the train step donates the state.
      teacher_params=jax.tree.map(jnp.copy, params),
      teacher_batch_stats=jax.tree.map(jnp.copy, batch_stats),
      key=key,
  )


def init_variables(model: nn.Module, key: jax.Array, input_shape) -> PyTree:
  """The model's random initial variables for the run's key."""
  init_key = jax.random.fold_in(key, 0x5EED)
  return model.init(init_key, jnp.zeros(input_shape, jnp.float32), train=False)


def update_teacher(state: TrainState, alpha: float) -> TrainState:
  """``teacher = alpha * teacher + (1 - alpha) * student`` for params and BN statistics."""
  step_size = 1.0 - alpha
  return state.replace(
      teacher_params=optax.incremental_update(state.params, state.teacher_params, step_size),
      teacher_batch_stats=optax.incremental_update(
          state.batch_stats, state.teacher_batch_stats, step_size),
  )
