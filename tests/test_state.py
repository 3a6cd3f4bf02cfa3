"""Tests of cowmix_jax/state.py: initialisation and the teacher EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cowmix_jax import models
from cowmix_jax.state import create_train_state, update_teacher


def _state(tiny_config):
  model = models.build_model(tiny_config.model, 3)
  return create_train_state(model, optax.adam(1e-3), jax.random.PRNGKey(0), (1, 32, 32, 3))


def test_teacher_starts_equal_to_student_in_separate_buffers(tiny_config):
  state = _state(tiny_config)
  for s, t in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.teacher_params)):
    np.testing.assert_array_equal(s, t)
    assert s.unsafe_buffer_pointer() != t.unsafe_buffer_pointer()


def test_update_teacher_is_exponential_moving_average(tiny_config):
  state = _state(tiny_config)
  rng = np.random.default_rng(0)
  moved = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype), state.params)
  moved_stats = jax.tree.map(lambda x: x + 1.0, state.batch_stats)
  state = state.replace(params=moved, batch_stats=moved_stats)
  new = update_teacher(state, alpha=0.9)
  for student, teacher, result in zip(jax.tree.leaves(moved), jax.tree.leaves(state.teacher_params),
                                      jax.tree.leaves(new.teacher_params)):
    np.testing.assert_allclose(result, 0.9 * np.asarray(teacher) + 0.1 * np.asarray(student),
                               rtol=1e-6, atol=1e-6)
  for student, teacher, result in zip(jax.tree.leaves(moved_stats),
                                      jax.tree.leaves(state.teacher_batch_stats),
                                      jax.tree.leaves(new.teacher_batch_stats)):
    np.testing.assert_allclose(result, 0.9 * np.asarray(teacher) + 0.1 * np.asarray(student),
                               rtol=1e-6)
