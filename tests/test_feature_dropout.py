"""Tests of cowmix_jax/models/feature_dropout.py: Dropout2d's statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from cowmix_jax.models.feature_dropout import drop_channels


def test_whole_channels_are_kept_with_probability_one_half_and_scaled_by_two():
  features = {"skip_4": jnp.ones((64, 5, 6, 32)), "top": jnp.full((64, 2, 3, 128), 3.0)}
  dropped = jax.jit(drop_channels)(features, jax.random.PRNGKey(0))
  for name, value in features.items():
    out = np.asarray(dropped[name])
    per_channel = out[:, :1, :1, :]  # a channel is dropped or kept as a whole
    assert (out == per_channel).all(), name
    kept = per_channel != 0
    np.testing.assert_array_equal(per_channel[kept], 2 * np.asarray(value)[:, :1, :1][kept])
    n = kept.size
    assert abs(kept.mean() - 0.5) < 5 * np.sqrt(0.25 / n), name  # binomial, 5 SE
  # Each image draws its own channels, and another key other ones.
  first = np.asarray(dropped["skip_4"])[:, 0, 0, :]
  assert not (first[0] == first[1]).all()
  other = np.asarray(drop_channels(features, jax.random.PRNGKey(1))["skip_4"])[:, 0, 0, :]
  assert not (other == first).all()
